"""Config parsing: presets, YAML, overrides, and errors that name the bad key or value."""

import pytest

from lead_fast.config import ConfigError, parse_args


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
    with pytest.raises(ConfigError, match="model.dtype must be auto, float32 or bfloat16"):
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
    cfg = parse_args(["--preset", "grpo_lead_14b", "--model", "/models/x"])
    assert Path(cfg.data.path).is_file() and Path(cfg.data.path).name == "train_stage2_3.json"
    assert Path(cfg.data.eval_path).is_file() and Path(cfg.data.eval_path).name == "aime24.json"


@pytest.mark.parametrize("flag,value,message", [
    ("--optim.grad_clip", "-1", "optim.grad_clip must be >= 0"),
    ("--optim.grad_clip", "nan", "optim.grad_clip must be >= 0"),
    ("--data.eval_size", "0", "data.eval_size must be >= 1"),
    ("--data.eval_size", "-1", "data.eval_size must be >= 1"),
])
def test_values_that_would_train_wrongly_are_refused(flag, value, message):
    with pytest.raises(ConfigError, match=message):
        parse_args([flag, value])


def test_resume_and_overwrite_contradict():
    with pytest.raises(ConfigError, match="contradict"):
        parse_args(["--resume", "--run.overwrite", "true"])


def test_packing_needs_an_attention_that_isolates_sequences():
    with pytest.raises(ConfigError, match="optim.packing needs an attention implementation .*sdpa, eager, "
                                          "flash_attention_2.*'flex_attention'"):
        parse_args(["--model.attn_implementation", "flex_attention"])
    assert parse_args(["--model.attn_implementation", "flex_attention", "--optim.packing", "false"]).optim.packing is False
    with pytest.raises(ConfigError, match="model.liger_kernels must be auto, on or off"):
        parse_args(["--model.liger_kernels", "yes"])
