"""The trainer with real torchrun, FSDP2 on gloo, a real (tiny) model directory and the shipped data."""

import json
import math

import pytest
import torch

from tests.helpers.launch import HELPERS, STANDIN, TRAIN_DATA, check, torchrun

OFFICIAL_AGG = ["--algo.loss_agg", "seq_mean_token_mean", "--algo.loss_norm", "sampled"]
# what grpo_lead_14b's update does besides its aggregation
OFFICIAL_UPDATE = [*OFFICIAL_AGG, "--optim.weight_decay", "0.01", "--model.activation_checkpointing", "true"]


@pytest.fixture(scope="module", params=["token_mean", "official"])
def update_results(request, tiny_model_dir, tmp_path_factory):
    out = {}
    extra = OFFICIAL_UPDATE if request.param == "official" else []
    for world in (1, 2):
        d = tmp_path_factory.mktemp(f"upd{world}")
        check(torchrun(world, [str(HELPERS / "dist_update.py"), tiny_model_dir, str(TRAIN_DATA), str(d / "res.json"),
                               *extra]))
        out[world] = dict(json.loads((d / "res.json").read_text()), weights=str(d / "res.json.weights.pt"))
    return out


def _weights_differ(a: dict, b: dict) -> float:
    """Largest difference between the weights two helper runs had after their update."""
    wa, wb = torch.load(a["weights"]), torch.load(b["weights"])
    assert wa.keys() == wb.keys() and wa
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def test_two_ranks_match_one_rank(update_results):
    """The same global batch gives the same step on 1 and 2 ranks, with the default update and with the
    official recipe's (sequence mean of token means over the sampled sequences, weight decay, activation
    checkpointing): the same
    loss, gradient norm and entropy, and the same weights after the optimizer step (FSDP2's sharded AdamW
    against the unwrapped one)."""
    one, two = update_results[1], update_results[2]
    assert one["world"] == 1 and two["world"] == 2
    assert abs(one["loss"] - two["loss"]) <= 1e-5 * max(1.0, abs(one["loss"])), (one, two)
    assert abs(one["grad_norm"] - two["grad_norm"]) <= 1e-4 * one["grad_norm"], (one, two)
    assert abs(one["entropy"] - two["entropy"]) <= 1e-5 * one["entropy"]
    assert one["grad_norm"] > 0 and one["moved"] > 1e-4     # lr 1e-3: the update moved the weights
    assert _weights_differ(one, two) <= 1e-6


def test_sync_makes_engine_bit_identical(update_results):
    """Two ranks: the update leaves the engine behind, and the sync makes it equal to the gathered policy.
    One rank: the engine holds the policy's own tensors (the same storage), so it is current without one."""
    one, two = update_results[1], update_results[2]
    assert two["sync_exact"] and two["tensors"] == two["engine_tensors"], two
    assert not two["engine_shares_weights"] and not two["engine_current_before_sync"] and not two["same_storage"], two
    assert one["engine_shares_weights"] and one["same_storage"] and one["tensors"] == one["engine_tensors"], one


def test_one_full_step_on_real_data(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    p = check(torchrun(2, ["-m", "lead_fast.train", "--preset", "tiny",
                           "--model", tiny_model_dir, "--data", str(TRAIN_DATA),
                           "--output-dir", str(out), "--max-steps", "1", "--eval-every", "1",
                           "--optim.prompts_per_step", "4", "--rollout.n", "4", "--rollout.max_new_tokens", "12",
                           "--data.max_prompt_tokens", "200", "--data.eval_size", "4",
                           "--algo.drop_no_signal", "false", "--optim.lr", "1e-4",
                           "--model.activation_checkpointing", "true"]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    last = rows[-1]
    # the values, not just the keys (tests/core/test_metrics.py checks each against hand-computed ones)
    assert last["groups"] == 4 and last["groups_dropped"] == 0                 # drop_no_signal false: all kept
    assert last["groups_dropped/all_equal"] == last["groups_dropped/no_correct"] == 0
    assert last["lr"] == 1e-4 and last["kl"] == 0.0 and last["nonfinite_skipped"] == 0   # no reference model
    assert 1 <= last["response_length/mean"] <= 12 and 0 <= last["rollout/truncated_frac"] <= 1
    assert 0 <= last["accuracy"] <= 1 and 0 <= last["clip_frac"] <= 1 and last["entropy"] > 0
    assert last["reward/mean"] >= -2 and math.isfinite(last["loss"]) and last["grad_norm"] >= 0   # 0: no correct answer
    assert last["time/step_s"] >= last["time/rollout_s"] + last["time/update_s"] > 0
    assert last["tokens_per_s"] == pytest.approx(16 * last["response_length/mean"] / last["time/step_s"])
    assert last["eval/accuracy"] == last["eval/pass@1"] and 0 <= last["eval/cons@n"] <= 1
    assert 1 <= last["eval/response_length"] <= 12 and last["time/eval_s"] > 0
    assert "skipped" in p.stdout + p.stderr  # prompts over 200 tokens are skipped and counted
    assert (out / "metrics.png").exists()
    assert (out / "checkpoints" / "step-00000001" / "trainer_state.json").exists()


def test_default_run_learns(tmp_path):
    """The embedded default, exactly as README runs it (only the output directory moved): eval accuracy
    up >= 20 points and mean eval response length down >= 20% from the first eval to the last."""
    out = tmp_path / "default"
    check(torchrun(2, ["-m", "lead_fast.train", "--output-dir", str(out)], timeout=900))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r.get("eval/accuracy") is not None]
    first, last = evals[0], evals[-1]
    assert first["step"] == 0 and last["step"] == rows[-1]["step"]
    assert last["eval/accuracy"] - first["eval/accuracy"] >= 0.20, (first, last)
    assert last["eval/response_length"] <= 0.8 * first["eval/response_length"], (first, last)
    assert (out / "metrics.png").exists()


def test_one_step_with_the_official_algorithm_settings(tiny_model_dir, tmp_path):
    """grpo_lead_14b's algorithm settings (stop at </think>, answer before it, unboxed is wrong, drop groups
    with no correct answer, sequence mean of token means over sampled sequences) through a whole step on the
    tiny model: its grading and its filter. A random model never closes </think>, so no group is kept here;
    an update under the same update settings runs in ``test_two_ranks_match_one_rank[official]``."""
    out = tmp_path / "run"
    check(torchrun(1, ["-m", "lead_fast.train", "--preset", "tiny",
                       "--model", tiny_model_dir, "--data", str(TRAIN_DATA),
                       "--output-dir", str(out), "--max-steps", "1", "--eval-every", "1",
                       "--optim.prompts_per_step", "2", "--rollout.n", "3", "--rollout.max_new_tokens", "10",
                       "--data.max_prompt_tokens", "200", "--data.eval_size", "2", "--rollout.eval_n", "2",
                       "--rollout.stop", "</think>", "--algo.answer_from", "before_think",
                       "--algo.unboxed_is_wrong", "true", "--algo.drop_no_correct", "true", *OFFICIAL_UPDATE]))
    row = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    # a random model never closes </think>: every response is unanswered, so both groups have no correct one
    assert row["no_answer_frac"] + row["degenerate_frac"] == 1.0
    assert row["groups_dropped"] == row["groups_dropped/no_correct"] + row["groups_dropped/all_equal"] == 2
    assert row["loss"] is None and row["groups"] == 2


def test_step_does_not_depend_on_packing_budget_or_world_size(tiny_model_dir, tmp_path):
    """One update of the same global batch (two prompts, four responses each): packed (budgets 96 and 100000
    tokens, 1 and 2 ranks), padded with each prompt once per row (1 and 2 ranks), and one row per response:
    the same loss, gradient norm and weights after the update."""
    on, off = ["--optim.packing", "on"], ["--optim.packing", "off"]
    variants = {"packed 96, 1 rank": (1, on), "packed 96, 2 ranks": (2, on),
                "packed 100000, 2 ranks": (2, [*on, "--optim.micro_batch_tokens", "100000"]),
                "padded 96, shared prompts, 1 rank": (1, off), "padded 96, shared prompts, 2 ranks": (2, off),
                "padded 96, a row per response, 1 rank": (1, [*off, "--optim.shared_prompt", "off"])}
    got = {}
    for i, (name, (world, extra)) in enumerate(variants.items()):
        (tmp_path / str(i)).mkdir()
        res = tmp_path / str(i) / "res.json"
        check(torchrun(world, [str(HELPERS / "dist_update.py"), tiny_model_dir, str(TRAIN_DATA), str(res), *extra]))
        got[name] = dict(json.loads(res.read_text()), weights=f"{res}.weights.pt")
    base = got["packed 96, 1 rank"]
    assert base["moved"] > 1e-4
    for name, r in got.items():
        assert abs(r["loss"] - base["loss"]) <= 1e-5 * max(1.0, abs(base["loss"])), (name, r, base)
        assert abs(r["grad_norm"] - base["grad_norm"]) <= 1e-4 * base["grad_norm"], (name, r, base)
        assert _weights_differ(r, base) <= 1e-6, name


def test_steps_with_the_vllm_engine_stand_in(embedded_model, tmp_path):
    """Two ranks, --rollout.engine vllm on a platform that sleeps: the stand-in of vLLM 0.33.0 on CUDA
    (``tests/standin``; vLLM itself, on CPU, in ``tests/rollout/test_vllm_real.py``). Every generate follows
    a complete sync after the level-2 sleep (step, eval, step after eval; the stand-in raises otherwise), and
    the engine's log-probs match the trainer's at the weights that generated."""
    out = tmp_path / "run"
    check(torchrun(2, ["-m", "lead_fast.train", "--preset", "tiny", "--model", embedded_model, "--output-dir", str(out),
                       "--max-steps", "3", "--eval-every", "2", "--rollout.engine", "vllm",
                       "--rollout.logprobs", "true", "--data.eval_size", "16"],
                   PYTHONPATH=str(STANDIN)))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for r in rows[1:]:
        assert 0 <= r["rollout/logprob_gap"] < 1e-4, r
        assert 0 <= r["rollout/truncated_frac"] <= 1 and r["rollout/tokens_per_s"] > 0
    assert rows[2]["eval/accuracy"] is not None and rows[3]["loss"] is not None


def test_a_run_that_trains_nothing_says_so_and_stops(tmp_path):
    """The embedded model before any warm start answers nothing right: every group is dropped. Each step says
    so instead of loss=nan, and run.max_no_signal_steps of them in a row stop the run with advice (exit 1)."""
    from tests.helpers.launch import python

    out = tmp_path / "run"
    p = python(["-m", "lead_fast.train", "--output-dir", str(out), "--run.warm_start_steps", "0", "--eval-every", "0",
                "--optim.prompts_per_step", "4", "--run.max_no_signal_steps", "3"])
    assert p.returncode == 1, p.stderr[-3000:]
    said = [line for line in p.stdout.splitlines() if line.startswith("step ")]
    assert len(said) == 3 and all("| no update: all 4 groups dropped (" in line for line in said), p.stdout[-2000:]
    assert not any("loss=" in line for line in said)
    assert "lead_fast: stopped: 3 steps in a row (up to step 3) trained nothing" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
