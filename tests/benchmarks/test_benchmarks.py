"""Keeps benchmarks/ from rotting: the quick CPU run must produce agreeing losses for every method that ran."""

import importlib.util
import json
import os
import re
from pathlib import Path

import torch

from tests.helpers.launch import skip_unless_interpreted

ROOT = Path(__file__).resolve().parents[2]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_loss_head_quick(tmp_path):
    skip_unless_interpreted()
    bench = _load("bench_loss_head")
    out = tmp_path / "b.json"
    rows = bench.main(["--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["rows"] == json.loads(json.dumps(rows))
    ok = [r for r in rows if r["status"] == "ok"]
    methods = {r["method"] for r in ok}
    # under the interpreter the real kernel runs here too
    assert {"lead_fast triton", "lead_fast torch", "torch full logits (fp32 log_softmax)"} <= methods
    assert any(r["status"].startswith("missing") for r in rows)  # CUDA-only peers are reported, not dropped
    for shape in {r["shape"] for r in rows}:
        losses = [r["loss"] for r in ok if r["shape"] == shape and "loss" in r]
        assert len(losses) >= 3
        assert max(losses) - min(losses) < 1e-4 * max(1.0, abs(losses[0])), losses



def test_bench_loss_head_sweep_small():
    skip_unless_interpreted()
    bench = _load("bench_loss_head")
    rows = bench.run_sweep(8, 8, 300, torch.float32, torch.device("cpu"), 0, 0, blocks=["4096x16", "8192x32"],
                           chunks=[3, 1000])
    assert os.environ.get("LEAD_FAST_ROW_BLOCK") is None  # restored
    tuned = [r for r in rows if r["method"].startswith("lead_fast triton")]
    assert len(tuned) == 2 * 2 * 2 and all(r["status"] == "ok" for r in tuned)  # configs x chunks x modes
    losses = [r["loss"] for r in tuned if "loss" in r]
    assert len(losses) == 4 and max(losses) - min(losses) < 1e-5 * max(1.0, abs(losses[0]))


def test_bench_train_step_quick(tmp_path):
    """The step benchmark on CPU: every row that runs computes the same first-step loss."""
    from tests.helpers.launch import check, python

    out = tmp_path / "s.json"
    p = check(python([str(ROOT / "benchmarks" / "bench_train_step.py"), "--quick", "--out", str(out),
                      "--model-dir", str(tmp_path / "m")]))
    rows = json.loads(out.read_text())["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert [r["method"][:3] for r in ok] == ["(a)", "(b)", "(c)"]      # Liger rows need CUDA: reported, skipped
    assert all(r["status"].startswith("skipped") for r in rows[3:])
    losses = [r["loss_first_step"] for r in ok]
    assert max(losses) - min(losses) < 1e-5 * max(1.0, abs(losses[0])), losses
    assert "(c) packed + fused head" in p.stdout


def test_bench_rollout_quick(tmp_path):
    """The rollout benchmark on CPU: both transformers engines generate exactly the requested tokens; vLLM
    is reported as missing, not dropped."""
    bench = _load("bench_rollout")
    out = tmp_path / "r.json"
    rows = bench.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(rows))
    by = {r["engine"]: r for r in rows}
    for name in ("hf-generate", "hf-continuous"):
        assert by[name]["status"] == "ok" and by[name]["equal_work"] and by[name]["tokens"] == 4 * 2 * 16, by[name]
    assert by["vllm"]["status"].startswith("missing")


def test_bench_mismatch_quick(tmp_path):
    """The mismatch benchmark on the tiny model with the transformers engine: float32 engine and trainer
    agree to float rounding, bfloat16 sampling shows a real gap."""
    bench = _load("bench_mismatch")
    rows = bench.main(["--quick", "--engines", "hf", "--out", str(tmp_path / "m.json")])
    by = {r["dtype"]: r for r in rows}
    assert by["float32"]["status"] == by["bfloat16"]["status"] == "ok"
    assert by["float32"]["logprob_gap"] < 1e-5 and by["float32"]["token_truncated_frac"] == 0.0
    assert by["bfloat16"]["logprob_gap"] > 100 * by["float32"]["logprob_gap"]
    assert by["bfloat16"]["mismatch_kl"] >= 0 and 0 <= by["bfloat16"]["seq_masked_frac"] <= 1


def test_bench_overlap_quick(tmp_path, embedded_model):
    """Three short real runs (colocated, disaggregated at staleness 0 and 1) on 2 ranks: it runs, it
    writes the table's numbers, staleness 1 trains on one-update-old batches."""
    import subprocess
    import sys

    out = tmp_path / "o.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_overlap.py"), "--quick", "--out",
                        str(tmp_path / "runs"), "--json", str(out), "--", "--model", embedded_model,
                        "--run.warm_start_steps", "0"], capture_output=True, text=True, timeout=900,
                       env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    runs = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert set(runs) == {"colocated 2", "disaggregated 1+1, staleness 0", "disaggregated 1+1, staleness 1"}
    assert all(r["steps"] == 2 and r["steps_per_hour"] > 0 for r in runs.values())
    assert runs["disaggregated 1+1, staleness 1"]["staleness"] == 0.5       # steps 1 and 2: 0, then 1
    assert runs["disaggregated 1+1, staleness 0"]["overlap_frac"] == 0.0


def test_step_time_model_by_hand():
    """8 GPUs at the official lengths: colocated 307 + 67.2 + 10 s; staleness 1 on 3 generating GPUs
    max(307.2, 67.2 * 8 / 5) + 5 s."""
    rows = _load("step_time_model").main(["--gpus", "8"])
    r = rows[0]
    assert abs(r["colocated_s"] - (12288 / 40 + 256 * 6300 / (8 * 3000) + 10)) < 1e-9
    assert r["staleness1_gen_gpus"] == 3 and abs(r["staleness1_s"] - (12288 / 40 + 5)) < 1e-9



def test_gpu_prepare_then_the_sessions_dry_run(tmp_path):
    """gpu_prepare.sh fills a carry folder (the wheels from the package index, a warm-started model: 2 steps
    here, 300 for real) and says its size; gpu_session.sh --dry-run then finds everything it reads, prints
    each step's time box, and the default session fits in 360 s. Without the model it is not ready."""
    import subprocess

    carry = tmp_path / "carry"
    env = dict(os.environ, CARRY=str(carry), WARM_STEPS="2")
    env.pop("TRITON_INTERPRET", None)
    prep = subprocess.run(["bash", "benchmarks/gpu_prepare.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert prep.returncode == 0, prep.stdout[-3000:] + prep.stderr[-3000:]
    assert re.search(r"== .*carry: \d+ MiB \(\d+ KiB\) of the 64 MiB", prep.stdout), prep.stdout
    dry = subprocess.run(["bash", "benchmarks/gpu_session.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert dry.returncode == 0 and "dry run: ready" in dry.stdout, dry.stdout + dry.stderr
    assert '"steps": 2' in dry.stdout
    boxes = {m[1]: int(m[2]) for m in re.finditer(r"^  \d (\w+) +(\d+) s", dry.stdout, re.M)}
    assert set(boxes) == {"probe", "gate", "bench", "sweep", "train_step", "grpo"}, dry.stdout
    total = int(re.search(r"in all: (\d+) s", dry.stdout)[1])
    assert total == sum(boxes.values()) <= 360, dry.stdout
    (carry / "tiny_model" / "model.safetensors").unlink()
    dry = subprocess.run(["bash", "benchmarks/gpu_session.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert dry.returncode == 1 and "MISSING: the warm-started model" in dry.stdout and "NOT ready" in dry.stdout
