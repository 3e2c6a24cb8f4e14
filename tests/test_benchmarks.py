"""Keeps benchmarks/ from rotting: the quick CPU run must produce agreeing losses for every method that ran."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_loss_head_quick(tmp_path):
    bench = _load("bench_loss_head")
    out = tmp_path / "b.json"
    rows = bench.main(["--quick", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["rows"] == json.loads(json.dumps(rows))
    ok = [r for r in rows if r["status"] == "ok"]
    methods = {r["method"] for r in ok}
    # conftest sets TRITON_INTERPRET=1, so the real kernel runs here too
    assert {"lead_fast triton", "lead_fast torch", "torch full logits (fp32 log_softmax)"} <= methods
    assert any(r["status"].startswith("missing") for r in rows)  # CUDA-only peers are reported, not dropped
    for shape in {r["shape"] for r in rows}:
        losses = [r["loss"] for r in ok if r["shape"] == shape and "loss" in r]
        assert len(losses) >= 3
        assert max(losses) - min(losses) < 1e-4 * max(1.0, abs(losses[0])), losses

