"""Checkpoints: sharded model and optimizer state (``torch.distributed.checkpoint``), plus the trainer's
own state (step, scheduler, config) and each rank's torch RNG state, written atomically and pruned to the
last K; and the policy of when to save (``Checkpointer``).

Layout: ``OUTPUT_DIR/checkpoints/step-00000012/`` holds DCP shards (``*.distcp``, ``.metadata``) and
``trainer_state.json``. A checkpoint is first written under a ``.tmp-`` name and renamed when complete,
so a run killed at any instant leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from typing import Callable

import torch
import torch.distributed as dist

_STEP_DIR = re.compile(r"^step-(\d{8})$")
STATE_FILE = "trainer_state.json"


def checkpoint_root(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(output_dir)
    if not os.path.isdir(root):
        return []
    out = []
    for name in os.listdir(root):
        m = _STEP_DIR.match(name)
        path = os.path.join(root, name)
        if m and os.path.exists(os.path.join(path, STATE_FILE)):
            out.append((int(m.group(1)), path))
    return sorted(out)


def latest_checkpoint(output_dir: str) -> str | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1][1] if ckpts else None


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(output_dir: str, step: int, model, optimizer, trainer_state: dict, keep_last: int = 2) -> str:
    """Collective: every rank calls it. Returns the final checkpoint path."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = checkpoint_root(output_dir)
    final = os.path.join(root, f"step-{step:08d}")
    tmp = os.path.join(root, f".tmp-step-{step:08d}")
    if _rank() == 0:
        os.makedirs(root, exist_ok=True)
        if os.path.exists(tmp):
            shutil.rmtree(tmp)  # left by a run killed mid-write
        os.makedirs(tmp)
    _barrier()
    msd, osd = get_state_dict(model, optimizer)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=tmp)
    # Per-rank RNG state: lead_fast's own sampling derives from (seed, step, rank), but a model may draw
    # from the global generators (dropout).
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, os.path.join(tmp, f"rng-rank{_rank()}.pt"))
    _barrier()
    if os.environ.get("LEAD_FAST_KILL_DURING_SAVE") == str(step) and _rank() == 0:
        # Fault injection for tests: die like a preempted job, shards written, checkpoint not yet complete.
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
    if _rank() == 0:
        with open(os.path.join(tmp, STATE_FILE), "w") as f:
            json.dump(trainer_state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)  # the checkpoint exists, complete, or not at all
        for _, old in list_checkpoints(output_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(path: str, model, optimizer) -> dict:
    """Collective. Loads model and optimizer state in place (any world size) and returns trainer_state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not os.path.exists(os.path.join(path, STATE_FILE)):
        raise FileNotFoundError(f"{path} is not a complete lead_fast checkpoint (no {STATE_FILE})")
    msd, osd = get_state_dict(model, optimizer)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    rng = os.path.join(path, f"rng-rank{_rank()}.pt")
    if os.path.exists(rng):
        saved = torch.load(rng)
        torch.set_rng_state(saved["torch"])
        if "cuda" in saved and torch.cuda.is_available():
            torch.cuda.set_rng_state(saved["cuda"])
    with open(os.path.join(path, STATE_FILE)) as f:
        return json.load(f)


class Checkpointer:
    """When to save: every ``save_every`` steps, at the last step, and when forced (a stop request).

    ``state`` returns the trainer's own state (step excluded) at save time.
    """

    def __init__(self, output_dir: str, *, save_every: int, keep_last: int, model, optimizer,
                 state: Callable[[], dict], log=print):
        self.output_dir, self.save_every, self.keep_last = output_dir, save_every, keep_last
        self.model, self.optimizer, self.state, self.log = model, optimizer, state, log

    def maybe_save(self, step: int, *, last: bool, force: bool = False) -> str | None:
        """Collective. Saves after ``step`` when due; returns the checkpoint path, or None."""
        if not (force or last or (self.save_every and step % self.save_every == 0)):
            return None
        t0 = time.time()
        path = save_checkpoint(self.output_dir, step, self.model, self.optimizer, dict(step=step, **self.state()),
                               keep_last=self.keep_last)
        self.log(f"saved {path} in {time.time() - t0:.1f}s")
        return path

    def resume(self) -> dict | None:
        """Collective. Loads the newest complete checkpoint into the model and optimizer and returns its
        trainer state (with ``path``), or None when there is none."""
        path = latest_checkpoint(self.output_dir)
        if path is None:
            self.log(f"--resume: no complete checkpoint in {checkpoint_root(self.output_dir)}; starting fresh")
            return None
        state = load_checkpoint(path, self.model, self.optimizer)
        self.log(f"resumed from {path} at step {state['step']}")
        return dict(state, path=path)
