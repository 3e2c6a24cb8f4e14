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
