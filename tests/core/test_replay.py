"""lead_fast.replay: a step saved by a real 2-rank run (FSDP2 on gloo) recomputed in one process, with the
other loss-head backend, gives the loss, entropy and gradient norm the run logged. The run is the GPU
session's script (benchmarks/cuda_grpo_run.py) in its CPU form, so this also keeps that script working."""

import json

import pytest

from tests.helpers.launch import ROOT, check, python


@pytest.fixture(scope="module")
def saved_run(embedded_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("replay")
    p = check(python([str(ROOT / "benchmarks" / "cuda_grpo_run.py"), "--quick", "--ranks", "2", "--out", str(out),
                      "--", "--model", embedded_model, "--run.warm_start_steps", "0", "--eval-every", "0",
                      "--optim.prompts_per_step", "4", "--rollout.max_new_tokens", "40",
                      "--optim.micro_batch_tokens", "200"], timeout=600))
    res = json.loads((out / "cuda_grpo_run.json").read_text())
    # the script's own check: the 2-rank run's step 1 replayed in one process, torch head, float32
    assert res["train_exit"] == 0 and res["steps"] == 2 and res["first_step_matches"], res
    assert res["first_step"]["grad_norm"] > 0, res            # the step had a gradient to compare
    assert "first step within 0.0001 of float32 on CPU: yes" in p.stdout
    return out / "run"


def test_saved_step_replays_in_one_process(saved_run, tmp_path):
    files = sorted(p.name for p in (saved_run / "samples").iterdir())
    assert files == ["step-000001.rank-0.pt", "step-000001.rank-1.pt"]       # the first step only, each rank's
    res = tmp_path / "r.json"
    # the run used the torch head on 2 ranks with packed rows; the replay: the Triton kernel (interpreted),
    # one process, padded rows with shared prompts (the CPU default)
    p = check(python(["-m", "lead_fast.replay", "--run-dir", str(saved_run), "--backend", "triton", "--json", str(res)],
                     TRITON_INTERPRET="1"))
    out = json.loads(res.read_text())
    rows = {r["metric"]: r for r in out["comparison"]}
    logged = out["logged"]
    assert out["ranks"] == 2 and out["samples"] == 8 * (logged["groups"] - logged["groups_dropped"]) > 0
    assert logged["step"] == 1 and logged["grad_norm"] > 0
    for k in ("loss", "entropy", "grad_norm"):
        assert rows[k]["within"] is True and rows[k]["run"] == logged[k], (k, rows[k])
        assert abs(rows[k]["replay"] - logged[k]) <= 1e-4 * abs(logged[k]), (k, rows[k])
    assert "| grad_norm |" in p.stdout


def test_replay_refusals_name_the_fix(saved_run, embedded_model, tmp_path):
    p = python(["-m", "lead_fast.replay", "--run-dir", str(saved_run), "--step", "2"])
    assert p.returncode == 2 and "no saved update inputs of step 2" in p.stderr and "--run.save_samples" in p.stderr
    p = python(["-m", "lead_fast.replay", "--run-dir", str(tmp_path)])
    assert p.returncode == 2 and "no config.yaml" in p.stderr
    # a later step needs the weights it started from
    (saved_run / "samples" / "step-000002.rank-0.pt").write_bytes((saved_run / "samples" / "step-000001.rank-0.pt")
                                                                 .read_bytes())
    try:
        p = python(["-m", "lead_fast.replay", "--run-dir", str(saved_run), "--step", "2"])
        assert p.returncode == 2 and "lead_fast.export" in p.stderr and "--model" in p.stderr, p.stderr
    finally:
        (saved_run / "samples" / "step-000002.rank-0.pt").unlink()
    # a damaged file is named, not a traceback
    (saved_run / "samples" / "step-000003.rank-0.pt").write_bytes(b"not a torch file")
    try:
        p = python(["-m", "lead_fast.replay", "--run-dir", str(saved_run), "--step", "3", "--model", embedded_model])
        assert p.returncode == 2 and "cannot read the saved update inputs" in p.stderr, p.stderr
        assert "step-000003.rank-0.pt" in p.stderr and "Traceback" not in p.stderr
    finally:
        (saved_run / "samples" / "step-000003.rank-0.pt").unlink()


def test_a_replay_that_differs_fails(saved_run, embedded_model, tmp_path):
    """The comparison can fail: the same step on a model that is not the one the run started from."""
    from transformers import AutoTokenizer

    from lead_fast.warm_start import build_tiny_model

    other = tmp_path / "other"      # the embedded model's tokenizer and shape, fresh random weights
    build_tiny_model(AutoTokenizer.from_pretrained(embedded_model), str(other), seed=1)
    p = python(["-m", "lead_fast.replay", "--run-dir", str(saved_run), "--model", str(other)])
    assert p.returncode == 1 and "| NO |" in p.stdout, p.stdout + p.stderr
