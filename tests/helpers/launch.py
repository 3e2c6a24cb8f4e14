"""Running the project's commands from tests: torchrun with N ranks, or one plain process."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = ROOT / "data" / "grpo_lead"
TRAIN_DATA = DATA_DIR / "train_stage2_3.json"
HELPERS = ROOT / "tests" / "helpers"
STANDIN = ROOT / "tests" / "standin"     # holds the `vllm` stand-in; put it on the path only where wanted


def interpreted() -> bool:
    """Triton runs under its interpreter in this test process (tests/conftest.py chooses)."""
    return os.environ.get("TRITON_INTERPRET", "0") != "0"


def skip_unless_interpreted() -> None:
    """For a test that runs Triton kernels on CPU tensors."""
    import pytest

    if not interpreted():
        pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1 (off on a CUDA machine, where "
                    "tests/ops/test_loss_head_gpu.py runs these cases on the GPU)")


def env(**extra) -> dict:
    """The environment of a launched run: one thread per rank, no Triton interpreter unless ``extra`` sets
    it (the torch backend runs on CPU), unbuffered output."""
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    e.pop("TRITON_INTERPRET", None)
    return dict(e, **extra)


def torchrun(nproc: int, args: list[str], timeout: float = 600, **extra_env) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env(**extra_env))


def python(args: list[str], timeout: float = 300, **extra_env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=env(**extra_env))


def check(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, f"exit {p.returncode}\nSTDOUT:\n{p.stdout[-4000:]}\nSTDERR:\n{p.stderr[-6000:]}"
    return p
