"""Short training runs of the tiny preset, launched as a user would, and what the tests read from them."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.launch import python

# the fewest prompts, responses and eval problems a one-process tiny run can take and still update
RUN = ["--optim.prompts_per_step", "4", "--rollout.n", "4", "--eval-every", "0", "--data.eval_size", "8"]


def train(model, out, *extra, **kw) -> subprocess.CompletedProcess:
    """One process (no torchrun) of the tiny preset on ``model`` into ``out``."""
    return python(["-m", "lead_fast.train", "--preset", "tiny",
                   "--model", model, "--output-dir", str(out), *RUN, *extra], **kw)


def tiny_args(model, out, *extra) -> list[str]:
    """torchrun arguments: the tiny preset with 8 prompts a step and an eval of 8 problems every 2 steps."""
    return ["-m", "lead_fast.train", "--preset", "tiny",
            "--model", model, "--output-dir", str(out), "--optim.prompts_per_step", "8",
            "--eval-every", "2", "--data.eval_size", "8", "--rollout.eval_n", "1", *extra]


def rows(out) -> list[dict]:
    """The run's metrics.jsonl, one dict a line."""
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def refused(p: subprocess.CompletedProcess, code: int = 2) -> str:
    """The one ``lead_fast:`` line of a run that stopped with ``code`` and no traceback."""
    assert p.returncode == code, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("lead_fast: ")]
    assert len(lines) == 1, p.stderr
    return lines[0]


def said_under_torchrun(p: subprocess.CompletedProcess, code: int) -> str:
    """The one ``lead_fast:`` line of a torchrun launch that ended with ``code`` (torchrun adds its own report,
    ``ChildFailedError``, to any failure; ``lead-fast`` does not, see tests/core/test_launch.py)."""
    assert p.returncode == code, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    lines = [line for line in p.stderr.splitlines() if line.startswith("lead_fast: ")]
    assert len(lines) == 1, p.stderr[-6000:]
    return lines[0]


def copy_run(run, tmp_path) -> Path:
    """A copy of a finished run directory that a test may change."""
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def mount_tmpfs(path, size_bytes, *opts) -> None:
    """A small filesystem at ``path`` (full-disk and read-only cases); skips where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size_bytes}", *opts]), "tmpfs", str(path)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip()})")
