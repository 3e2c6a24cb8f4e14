import os
import sys
from pathlib import Path

# The Triton kernels run on CPU tensors under the interpreter; it must be set before triton is imported.
if os.environ.get("LEAD_FAST_NO_INTERPRET") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "grpo_lead"
sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture(scope="session")
def train_data():
    import json

    path = DATA / "train_stage2_3.json"
    if not path.exists():
        pytest.skip(f"{path} not found (the shared GRPO-LEAD data lives beside the checkout)")
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, train_data):
    """A real model directory: a BPE tokenizer trained on the GRPO-LEAD problems and a random-init
    Qwen2-style model, saved and loaded back by the code under test."""
    from lead_fast.model import build_tiny_model, train_tokenizer

    out = tmp_path_factory.mktemp("tiny_model")
    texts = [r["problem"] for r in train_data[:1500]] + [r.get("solution") or "" for r in train_data[:300]]
    tok = train_tokenizer(texts, str(out), vocab_size=1000)
    build_tiny_model(tok, str(out), hidden=64, layers=2, heads=4, max_positions=1024)
    return str(out)
