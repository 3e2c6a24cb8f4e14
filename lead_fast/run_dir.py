"""The output directory: usable (writable, room for a checkpoint) and not someone else's run.

A run's files are ``config.yaml``, ``eval_problems.jsonl``, ``metrics.jsonl``, ``metrics.png``,
``checkpoints/`` and, when asked
(``run.save_samples``), ``samples/``. A new run
refuses to start in a directory that holds them unless told what to do: ``--resume`` (continue that run)
or ``--run.overwrite`` (remove its files first). ``base_model/`` (the embedded demo's model) is a cache,
not a run, and is kept.
"""

from __future__ import annotations

import glob
import os
import re
import shutil

from lead_fast.checkpoint import checkpoint_root, list_checkpoints
from lead_fast.errors import OutputDirError, describe_os_error
from lead_fast.pretrained import cached_dir

RUN_FILES = ("config.yaml", "eval_problems.jsonl", "metrics.jsonl", "metrics.png")
SAMPLES_DIR = "samples"
"""Each saved step's update inputs, one file per trainer rank (``samples_file``)."""
RUN_DIRS = ("tensorboard", "wandb", SAMPLES_DIR)


def ensure_writable(output_dir: str) -> None:
    """Create ``output_dir`` if needed and prove it writable with a probe file."""
    try:
        if os.path.exists(output_dir) and not os.path.isdir(output_dir):
            raise OutputDirError(f"output directory {output_dir} is a file; pass a directory with --output-dir")
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, f".lead_fast-write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise OutputDirError(f"cannot write to output directory {output_dir}: {describe_os_error(e)}; "
                             "pass another --output-dir") from None


def remove_if_unused(output_dir: str) -> None:
    """Remove ``output_dir`` when it holds nothing but empty folders: what a start that failed or was
    interrupted before writing anything leaves (``ensure_writable`` made it)."""
    if not os.path.isdir(output_dir):
        return
    for root, _, files in os.walk(output_dir):
        if files:
            return
    shutil.rmtree(output_dir, ignore_errors=True)


def existing_run(output_dir: str) -> str | None:
    """What another run left in ``output_dir`` (a phrase), or None when it holds none."""
    found = [f for f in RUN_FILES + RUN_DIRS if os.path.exists(os.path.join(output_dir, f))]
    steps = [step for step, _ in list_checkpoints(output_dir)]
    if steps:
        found.append(f"checkpoints of steps {steps[0]}..{steps[-1]}" if len(steps) > 1
                     else f"a checkpoint of step {steps[0]}")
    elif os.path.isdir(checkpoint_root(output_dir)) and os.listdir(checkpoint_root(output_dir)):
        found.append("a checkpoints/ folder")
    return ", ".join(found) or None


def clear_run(output_dir: str) -> None:
    """Remove a previous run's files (``--run.overwrite``); keeps ``base_model/``."""
    for f in RUN_FILES:
        p = os.path.join(output_dir, f)
        if os.path.exists(p):
            os.remove(p)
    for d in (checkpoint_root(output_dir), *(os.path.join(output_dir, d) for d in RUN_DIRS)):
        shutil.rmtree(d, ignore_errors=True)


def prepare(output_dir: str, *, resume: bool, overwrite: bool) -> None:
    """Check the output directory before any work; raises ``OutputDirError`` with one paragraph."""
    ensure_writable(output_dir)
    other = existing_run(output_dir)
    if other is None or resume:
        return
    if overwrite:
        clear_run(output_dir)
        return
    raise OutputDirError(
        f"output directory {output_dir} already holds a run ({other}). To continue that run, add --resume; "
        f"to start a new one, pass another --output-dir, or add --run.overwrite to delete the old run's files "
        f"first.")


def check_free_space(output_dir: str, need_bytes: int) -> None:
    """Refuse to start when the disk cannot hold one more checkpoint of ``need_bytes``."""
    free = shutil.disk_usage(output_dir).free
    if free < need_bytes:
        raise OutputDirError(f"output directory {output_dir} has {free / 2**20:.1f} MiB free, but one checkpoint "
                             f"needs about {need_bytes / 2**20:.1f} MiB (weights and optimizer state in float32); "
                             "free some space or pass another --output-dir")


def base_model_dir(output_dir: str, config: dict) -> str:
    """The model a run started from, from its config (as a dict): OUTPUT_DIR/base_model for the embedded demo
    and after a warm start, else its model.path (a pretrained:NAME one resolved to its cached directory)."""
    path = config.get("model", {}).get("path")
    if path is None or config.get("run", {}).get("warm_start_steps", 0):
        return os.path.join(output_dir, "base_model")
    return cached_dir(path)


def samples_file(output_dir: str, step: int, rank: int) -> str:
    """Where trainer rank ``rank`` saves the update inputs of step ``step`` (1-based, as in metrics.jsonl)."""
    return os.path.join(output_dir, SAMPLES_DIR, f"step-{step:06d}.rank-{rank}.pt")


def samples_files(output_dir: str, step: int) -> list[str]:
    """Every trainer rank's saved update inputs of step ``step``, in rank order (empty when none were saved)."""
    found = glob.glob(os.path.join(output_dir, SAMPLES_DIR, f"step-{step:06d}.rank-*.pt"))
    return sorted(found, key=lambda p: int(re.search(r"rank-(\d+)\.pt$", p).group(1)))


def write_config(output_dir: str, config: dict) -> str:
    """``OUTPUT_DIR/config.yaml``: the resolved config, which the eval and replay commands read back."""
    import yaml

    path = os.path.join(output_dir, "config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return path


def write_eval_problems(output_dir: str, problems) -> str:
    """``OUTPUT_DIR/eval_problems.jsonl``: the run's eval problems (held out from training, or read from
    ``data.eval_path``), one ``{"problem", "answer"}`` per line (a TRL prompt: ``{"prompt", "answer"}``), so that
    the eval command can score the trained model on exactly them (``--data`` this file, ``--run-dir`` the run)."""
    import json

    path = os.path.join(output_dir, "eval_problems.jsonl")
    with open(path, "w") as f:
        for p in problems:
            f.write(json.dumps({"prompt" if p.trl else "problem": p.problem, "answer": p.answer}) + "\n")
    return path
