"""Config parsing: presets, YAML, overrides, and errors that name the bad key or value."""

import pytest

from lead_fast.cli import parse_args
from lead_fast.errors import ConfigError


def test_unknown_keys_are_named_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'"):
        parse_args(["--optim.learning_rate", "1e-5"])
    with pytest.raises(ConfigError, match="did you mean '--max-steps'"):
        parse_args(["--max-step", "3"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr' \(did you mean 'optim.lr'\?\)"):
        parse_args(["--config", str(cfg)])


def test_values_are_converted_and_checked(tmp_path):
    cfg = parse_args(["--optim.lr", "3e-6", "--rollout.n=16", "--algo.drop_no_signal", "false",
                      "--optim.betas", "0.9,0.95", "--max-steps", "7"])
    assert cfg.optim.lr == 3e-6 and cfg.rollout.n == 16 and cfg.algo.drop_no_signal is False
    assert cfg.optim.betas == (0.9, 0.95) and cfg.run.max_steps == 7
    with pytest.raises(ConfigError, match="rollout.n: cannot read 'many' as int"):
        parse_args(["--rollout.n", "many"])
    with pytest.raises(ConfigError, match="model.dtype must be one of auto, float32, bfloat16, got 'fp8'"):
        parse_args(["--model.dtype", "fp8"])


def test_precedence_preset_then_yaml_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.5\nrollout:\n  n: 3\n")
    cfg = parse_args(["--config", str(f), "--rollout.n", "5"])
    assert cfg.optim.lr == 0.5 and cfg.rollout.n == 5 and cfg.run.output_dir == "runs/tiny"


def test_grpo_lead_14b_preset_uses_the_shipped_data():
    from pathlib import Path

    with pytest.raises(ConfigError, match="needs --model"):
        parse_args(["--preset", "grpo_lead_14b"])
    with pytest.raises(ConfigError, match=r"needs vLLM, which is not installed.*lead_fast\[gpu\].*--rollout.engine hf"):
        parse_args(["--preset", "grpo_lead_14b", "--model", "/models/x"])     # its engine is vLLM; none here
    cfg = parse_args(["--preset", "grpo_lead_14b", "--model", "/models/x", "--rollout.engine", "hf"])
    assert Path(cfg.data.path).is_file() and Path(cfg.data.path).name == "train_stage2_3.json"
    assert Path(cfg.data.eval_path).is_file() and Path(cfg.data.eval_path).name == "aime24.json"


@pytest.mark.parametrize("flag,value,message", [
    ("--optim.grad_clip", "-1", "optim.grad_clip must be >= 0"),
    ("--optim.grad_clip", "nan", "optim.grad_clip must be a finite number"),
    ("--data.eval_size", "0", "data.eval_size must be >= 1"),
    ("--data.eval_size", "-1", "data.eval_size must be >= 1"),
    ("--rollout.n", "1", r"rollout.n must be >= 2 \(GRPO compares the responses to one prompt"),
])
def test_values_that_would_train_wrongly_are_refused(flag, value, message):
    with pytest.raises(ConfigError, match=message):
        parse_args([flag, value])


def test_shared_prompt_is_for_padded_rows_under_sdpa_or_eager():
    cfg = parse_args([]).optim                          # auto: on CPU, padded rows under sdpa / eager
    assert cfg.shared_prompt == "auto" and cfg.shares_prompts("sdpa", "cpu") and cfg.shares_prompts("eager", "cpu")
    assert not cfg.shares_prompts("sdpa", "cuda") and not cfg.shares_prompts("flash_attention_2", "cpu")
    assert parse_args(["--optim.shared_prompt", "on"]).optim.shares_prompts("sdpa", "cuda")
    assert not parse_args(["--optim.shared_prompt", "false"]).optim.shares_prompts("sdpa", "cpu")
    assert not parse_args(["--optim.packing", "on"]).optim.shares_prompts("sdpa", "cpu")     # packed rows instead
    for flags in (["--optim.packing", "on"], ["--model.attn_implementation", "flash_attention_2"]):
        with pytest.raises(ConfigError, match="optim.shared_prompt on .* needs sdpa or eager attention and packing "
                                              "off.*--optim.shared_prompt off or auto"):
            parse_args(["--optim.shared_prompt", "on", *flags])


def test_resume_and_overwrite_contradict():
    with pytest.raises(ConfigError, match="contradict"):
        parse_args(["--resume", "--run.overwrite", "true"])


def test_packing_needs_an_attention_that_isolates_sequences():
    with pytest.raises(ConfigError, match="optim.packing needs an attention implementation .*sdpa, eager, "
                                          "flash_attention_2.*'flex_attention'"):
        parse_args(["--model.attn_implementation", "flex_attention", "--optim.packing", "on"])
    off = parse_args(["--model.attn_implementation", "flex_attention", "--optim.packing", "false"])
    assert off.optim.packing == "off"
    cfg = parse_args(["--model.attn_implementation", "flex_attention"]).optim       # auto: padded rows
    assert cfg.packing == "auto" and not cfg.packed("flex_attention") and not cfg.packed("sdpa")
    assert cfg.packed("flash_attention_2") and parse_args(["--optim.packing", "true"]).optim.packed("sdpa")
    assert cfg.micro_batch_budget("cpu") == 1024 and cfg.micro_batch_budget("cuda") == 16384
    with pytest.raises(ConfigError, match="model.liger_kernels must be one of auto, on, off"):
        parse_args(["--model.liger_kernels", "yes"])
    with pytest.raises(ConfigError, match="rollout.enforce_eager must be one of auto, on, off"):
        parse_args(["--rollout.enforce_eager", "yes"])


# One bad value for every checked field (and a non-finite float for a few unchecked ones).
BAD = {
    "algo.reward_funcs": "my_rewards", "algo.reward_timeout_s": "0", "algo.advantage_eps": "-1",
    "data.eval_size": "0", "data.max_prompt_tokens": "0", "rollout.n": "0", "rollout.temperature": "0",
    "rollout.top_p": "1.5", "rollout.max_new_tokens": "0", "rollout.eval_temperature": "-0.1", "rollout.eval_n": "0",
    "rollout.gpu_memory_utilization": "1.2", "rollout.kv_cache_gib": "-1", "rollout.ranks": "0",
    "rollout.max_staleness": "-1", "algo.alpha": "-0.1",
    "algo.min_short_len": "-1", "algo.w_min": "-0.5", "algo.w_max": "-1", "algo.midpoint": "1.5",
    "algo.steepness": "-2", "algo.clip_low": "-0.5", "algo.clip_high": "-0.1", "algo.kl_coef": "-1",
    "algo.entropy_coef": "-0.001", "algo.grade_timeout_s": "0", "algo.grade_workers": "-1", "optim.lr": "-1",
    "algo.rollout_correction_cap": "0.5", "algo.rollout_correction_low": "1.5",
    "algo.rollout_rejection_low": "1.5", "algo.rollout_rejection_high": "0.5",
    "optim.weight_decay": "-0.01", "optim.betas": "0.9,1.0", "optim.warmup_steps": "-1", "optim.grad_clip": "-1",
    "optim.prompts_per_step": "0", "optim.updates_per_batch": "0", "optim.micro_batch_tokens": "-1",
    "optim.loss_chunk_size": "-1", "run.max_steps": "-1", "run.epochs": "-1", "run.save_every": "-1",
    "run.keep_last": "-1", "run.eval_every": "-1", "run.seed": "-1", "run.warm_start_steps": "-1",
    "run.max_nonfinite_steps": "0", "run.max_no_signal_steps": "-1",
    "run.save_samples": "-1",
}
NON_FINITE = {"algo.alpha": "nan", "optim.lr": "inf", "algo.correct_reward": "nan", "algo.incorrect_reward": "-inf",
              "rollout.temperature": "nan", "optim.betas": "0.9,nan"}


def test_every_range_rule_has_a_bad_value_here():
    from lead_fast.config import RANGES

    assert set(RANGES) == set(BAD)


@pytest.mark.parametrize("key", sorted(BAD))
def test_a_bad_value_is_refused_at_parse_time(key):
    with pytest.raises(ConfigError, match=f"^{key} must be"):
        parse_args([f"--{key}", BAD[key]])


@pytest.mark.parametrize("key", sorted(NON_FINITE))
def test_non_finite_numbers_are_refused(key):
    with pytest.raises(ConfigError, match=f"^{key} must be (a finite number|>)"):
        parse_args([f"--{key}", NON_FINITE[key]])


def test_fields_checked_together_and_unreadable_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"algo.w_min \(2.0\) must not exceed algo.w_max \(1.5\)"):
        parse_args(["--algo.w_min", "2"])
    binary = tmp_path / "c.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match="is not a text"):
        parse_args(["--config", str(binary)])
    with pytest.raises(ConfigError, match="cannot read config file"):
        parse_args(["--config", str(tmp_path / "missing.yaml")])


def test_report_to_names_a_known_tracker():
    assert parse_args(["--run.report_to", "tensorboard"]).run.report_to == ["tensorboard"]
    with pytest.raises(ConfigError, match="run.report_to must be one of tensorboard, wandb, got 'mlflow'"):
        parse_args(["--run.report_to", "mlflow"])


@pytest.mark.parametrize("args,message", [
    (["--rollout.tensor_parallel_size", "2"], "unknown config key 'rollout.tensor_parallel_size'"),
    (["--rollout.logprobs", "true", "--rollout.hf_batching", "continuous"], "needs rollout.hf_batching generate"),
    (["--rollout.hf_batching", "paged"], "rollout.hf_batching must be one of generate, continuous, got 'paged'"),
])
def test_rollout_settings_the_engines_cannot_honour_are_refused(args, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(args)


def test_a_switch_written_alone_is_true_and_other_fields_still_need_a_value():
    cfg = parse_args(["--run.overwrite", "--max-steps", "2"])
    assert cfg.run.overwrite is True and cfg.run.max_steps == 2
    assert parse_args(["--run.overwrite"]).run.overwrite is True
    assert parse_args(["--run.overwrite", "false"]).run.overwrite is False
    with pytest.raises(ConfigError, match="--optim.lr needs a value"):
        parse_args(["--optim.lr"])


def test_explicit_values_win_over_what_the_preset_derived():
    """The 14b preset trains for run.epochs 3 on its own data with aime24 for eval: --max-steps replaces the
    epochs, --data replaces the eval file too, and both --max-steps and --run.epochs are refused."""
    base = ["--preset", "grpo_lead_14b", "--model", "/models/x", "--rollout.engine", "hf"]
    assert parse_args(base).run.epochs == 3
    cfg = parse_args([*base, "--max-steps", "1"])
    assert cfg.run.epochs == 0 and cfg.run.max_steps == 1
    with pytest.raises(ConfigError, match="--max-steps 1 and run.epochs 2.0 both set the length"):
        parse_args([*base, "--max-steps", "1", "--run.epochs", "2"])
    cfg = parse_args([*base, "--data", "my.json"])
    assert cfg.data.path == "my.json" and cfg.data.eval_path is None
    cfg = parse_args([*base, "--data", "my.json", "--data.eval_path", "ev.json"])
    assert cfg.data.eval_path == "ev.json"


def test_bfloat16_on_cpu_is_refused_at_parse_time():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA machine: bfloat16 is allowed")
    with pytest.raises(ConfigError, match="model.dtype bfloat16 needs CUDA"):
        parse_args(["--model.dtype", "bfloat16"])


def test_a_users_model_gets_the_defaults_not_the_demos_budgets(tmp_path):
    """--model without --preset: the dataclass defaults (a real model's budgets), not the tiny demo's
    32-token prompts and lr 2e-4; the same for a model named in the config file. --preset tiny still works."""
    from lead_fast.config import TrainConfig

    cfg = parse_args(["--model", "/models/x"])
    assert cfg.preset == "defaults"
    assert cfg.data.max_prompt_tokens == TrainConfig().data.max_prompt_tokens == 1024
    assert cfg.optim.lr == TrainConfig().optim.lr and cfg.run.output_dir == TrainConfig().run.output_dir
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  path: /models/x\n")
    assert parse_args(["--config", str(f)]).preset == "defaults"
    assert parse_args(["--model.path=/models/x"]).preset == "defaults"
    assert parse_args([]).preset == "tiny" and parse_args([]).data.max_prompt_tokens == 32
    tiny = parse_args(["--preset", "tiny", "--model", "/models/x"])
    assert tiny.preset == "tiny" and tiny.data.max_prompt_tokens == 32 and tiny.model.path == "/models/x"
    # a preset's warm start belongs to the preset's model: --model drops it unless asked for
    assert tiny.run.warm_start_steps == 0 and parse_args(["--preset", "smollm2", "--model", "/m"]).run.warm_start_steps == 0
    assert parse_args(["--preset", "tiny", "--model", "/m", "--run.warm_start_steps", "5"]).run.warm_start_steps == 5


def test_readme_lists_what_each_preset_changes():
    """docs/training.md's preset table is the one the code derives (config.preset_table): it cannot drift."""
    from pathlib import Path

    from lead_fast.presets import preset_table

    readme = (Path(__file__).resolve().parents[2] / "docs" / "training.md").read_text()
    assert preset_table() in readme, "docs/training.md's preset table is stale: paste presets.preset_table()'s output"


def test_smollm2_preset_and_the_generated_task():
    cfg = parse_args(["--preset", "smollm2"])
    assert cfg.model.path == "pretrained:smollm2" and cfg.data.path is None and cfg.data.operands == (10, 100)
    assert parse_args(["--preset", "smollm2", "--data.operands", "20,60"]).data.operands == (20, 60)
    with pytest.raises(ConfigError, match="data.operands must be two numbers lo,hi with 0 <= lo < hi, got 9,3"):
        parse_args(["--data.operands", "9,3"])
    with pytest.raises(ConfigError, match="lead_fast builds pretrained:smollm2"):
        parse_args(["--model", "pretrained:gpt5"])


def test_generated_task_operands():
    from lead_fast.task import synthetic_problems

    assert len(synthetic_problems()) == 400 and synthetic_problems()[0].problem == "What is 0 + 0?"
    big = synthetic_problems((10, 100))
    assert len(big) == 2000 and big == synthetic_problems((10, 100))
    assert all(10 <= int(x) < 100 for p in big for x in p.problem[len("What is "):-1].split(" + "))


def test_rollout_correction_defaults_and_refusals():
    """auto is token_truncate exactly when the engine returns log-probs; the official preset keeps none; a mode
    without the engine's log-probs, with top-p, or with bounds the wrong way round is refused."""
    assert parse_args([]).algo.correction(logprobs=False) == "none"
    cfg = parse_args(["--rollout.logprobs", "true"])
    assert cfg.algo.correction(cfg.rollout.logprobs) == "token_truncate" and cfg.algo.rollout_correction_cap == 2.0
    official = parse_args(["--preset", "grpo_lead_14b", "--model", "/m", "--rollout.logprobs", "true",
                           "--rollout.engine", "hf"])
    assert official.algo.correction(True) == "none"
    with pytest.raises(ConfigError, match="sequence_mask weighs each token by the engine's log-prob.*logprobs true"):
        parse_args(["--algo.rollout_correction", "sequence_mask"])
    with pytest.raises(ConfigError, match="rollout.top_p=0.9.*renormalized"):
        parse_args(["--rollout.logprobs", "true", "--rollout.top_p", "0.9"])
    assert parse_args(["--rollout.logprobs", "true", "--rollout.top_p", "0.9", "--algo.rollout_correction",
                       "none"]).rollout.top_p == 0.9          # the mismatch logged, nothing corrected: allowed
    # TRL's bounds: no lower bound unless set (then as TRL's clip_min), for the truncate modes too
    assert cfg.algo.rollout_correction_low is None
    assert parse_args(["--rollout.logprobs", "true", "--algo.rollout_correction_low", "0.5"]).algo.rollout_correction_low == 0.5
    assert parse_args(["--rollout.logprobs", "true", "--algo.rollout_correction_low", "none"]).algo.rollout_correction_low is None
    # the rejection filters, on their own or with a correction; they read the engine's log-probs too
    both = parse_args(["--rollout.logprobs", "true", "--algo.rollout_rejection", "geometric",
                       "--algo.rollout_correction", "sequence_mask"])
    assert (both.algo.rollout_rejection, both.algo.correction(True)) == ("geometric", "sequence_mask")
    with pytest.raises(ConfigError, match="rollout_rejection=token compares the engine's log-probs.*logprobs true"):
        parse_args(["--algo.rollout_rejection", "token"])
    with pytest.raises(ConfigError, match="algo.rollout_rejection must be one of none, token, sequence, geometric"):
        parse_args(["--rollout.logprobs", "true", "--algo.rollout_rejection", "tis"])
    with pytest.raises(ConfigError, match="algo.rollout_correction must be one of auto, none, token_truncate"):
        parse_args(["--algo.rollout_correction", "tis"])


def test_rollout_mode_choices_and_refusals():
    from lead_fast.config import check_world

    cfg = parse_args([])
    assert (cfg.rollout.mode, cfg.rollout.ranks, cfg.rollout.max_staleness) == ("colocated", 1, 0)
    with pytest.raises(ConfigError, match="rollout.mode must be one of colocated, disaggregated, got 'async'"):
        parse_args(["--rollout.mode", "async"])
    with pytest.raises(ConfigError, match="rollout.max_staleness=1 needs --rollout.mode disaggregated"):
        parse_args(["--rollout.max_staleness", "1", "--rollout.logprobs", "true"])
    with pytest.raises(ConfigError, match="rollout.max_staleness=1 trains on batches generated by older weights.*"
                                          "--rollout.logprobs true"):
        parse_args(["--rollout.mode", "disaggregated", "--rollout.max_staleness", "1"])
    with pytest.raises(ConfigError, match="max_staleness=2 trains on.*rollout_correction auto or a mode other"):
        parse_args(["--rollout.mode", "disaggregated", "--rollout.max_staleness", "2", "--rollout.logprobs", "true",
                    "--algo.rollout_correction", "none"])
    dis = parse_args(["--rollout.mode", "disaggregated", "--rollout.max_staleness", "1", "--rollout.logprobs", "true",
                      "--optim.prompts_per_step", "6"])
    check_world(dis, 3)             # 1 rollout rank + 2 trainer ranks share 6 prompts
    with pytest.raises(ConfigError, match="rollout.ranks=1 leaves no rank to train on: launch more than 1 rank"):
        check_world(dis, 1)
    with pytest.raises(ConfigError, match=r"divisible by the number of training ranks \(4\)"):
        check_world(dis, 5)
