"""Checkpoints: sharded model and optimizer state (``torch.distributed.checkpoint``), plus the trainer's
own state (step, scheduler, config) and each rank's torch RNG state, written atomically, checked when
read, and pruned to the last K of the same run; and the policy of when to save (``Checkpointer``).

Layout: ``OUTPUT_DIR/checkpoints/step-00000012/`` holds DCP shards (``*.distcp``, ``.metadata``), the RNG
files and ``trainer_state.json``, which is written last and lists every other file with its size. A
checkpoint is written under a ``.tmp-`` name and renamed when complete, so a run killed at any instant
leaves the previous checkpoint loadable; one whose listed files are missing, shorter or unreadable is
skipped (with a warning naming what is broken) in favour of the newest intact one.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import sys
import time
import uuid
from typing import Callable

import torch
import torch.distributed as dist

from lead_fast.distributed import from_rank0
from lead_fast.errors import CheckpointError, RolloutError, describe_os_error

_STEP_DIR = re.compile(r"^step-(\d{8})$")
STATE_FILE = "trainer_state.json"


def checkpoint_root(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Renamed (finished writing) checkpoint directories, oldest first; not yet checked for damage."""
    root = checkpoint_root(output_dir)
    if not os.path.isdir(root):
        return []
    out = [(int(m.group(1)), os.path.join(root, name)) for name in os.listdir(root)
           if (m := _STEP_DIR.match(name))]
    return sorted(out)


def read_state(path: str) -> dict:
    """``trainer_state.json`` of a checkpoint; ``CheckpointError`` when missing or unreadable."""
    try:
        with open(os.path.join(path, STATE_FILE)) as f:
            state = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{STATE_FILE} is missing") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{STATE_FILE} is unreadable ({e})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{STATE_FILE} holds no step")
    return state


def load_batches(path: str, batch_types: tuple = ()) -> list:
    """A ``batches-rank*.pt`` file: tensors, plain values and instances of ``batch_types`` only. The file is
    data, not code: anything else in it is refused (``pickle.UnpicklingError``) before it can run."""
    with torch.serialization.safe_globals(list(batch_types)):
        return torch.load(path, weights_only=True)


def damage(path: str, batch_types: tuple | None = None) -> str | None:
    """What is wrong with the checkpoint at ``path``, or None when every file it lists is there, whole
    and readable. With ``batch_types``, its stored rollout batches must also hold only those (``load_batches``)."""
    try:
        state = read_state(path)
    except CheckpointError as e:
        return str(e)
    files = state.get("files")
    if files is None:  # written before manifests existed: at least the DCP metadata must be there
        files = {".metadata": None}
    for name, size in sorted(files.items()):
        p = os.path.join(path, name)
        try:
            actual = os.path.getsize(p)
            with open(p, "rb") as f:
                f.read(1)
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as e:
            return f"{name} is unreadable ({e.strerror})"
        if size is not None and actual != size:
            return f"{name} has {actual} bytes, {size} were written"
        if batch_types is not None and name.startswith("batches-rank"):
            try:
                load_batches(p, batch_types)
            except pickle.UnpicklingError as e:
                what = str(e).split("\n\n")[-1].strip().splitlines()[0][:200]
                return (f"{name} holds objects other than rollout batches and was not loaded: loading it would run "
                        f"code from the file ({what})")
    return None


def latest_checkpoint(output_dir: str, warn=None) -> str | None:
    """The newest intact checkpoint; each newer damaged one is skipped with a warning to ``warn``."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    for _, path in reversed(list_checkpoints(output_dir)):
        broken = damage(path)
        if broken is None:
            return path
        warn(f"WARNING: skipping damaged checkpoint {path}: {broken}")
    return None


def _rank(group=None) -> int:
    """This rank within ``group`` (None: the world): rank 0 of the group writes the shared files."""
    return dist.get_rank(group) if dist.is_initialized() else 0


def _cause(e: BaseException) -> str:
    """The root cause of a failed write, in words (DCP wraps each rank's error in its own exception)."""

    seen = e
    while seen is not None:
        if isinstance(seen, OSError):
            return describe_os_error(seen)
        seen = seen.__cause__ or seen.__context__
    text = str(e)
    if "No space left on device" in text:
        return "the disk is full (no space left on device)"
    if "unexpected pos" in text:  # torch.save's zip writer after a short write: what a full disk looks like
        return "a write came up short (torch.save: unexpected pos), which is what a full disk does"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(e).__name__


def after_shards_written(step: int, rank: int) -> None:
    """Called on every rank once a checkpoint's shards are written and before it is complete (no
    ``trainer_state.json``, not renamed): a seam for tests (``tests/helpers/faults.py`` kills a run there).
    Does nothing."""


def save_checkpoint(output_dir: str, step: int, model, optimizer, trainer_state: dict, keep_last: int = 2, *,
                    group=None, rank_batches=None) -> str:
    """Collective over ``group`` (the ranks that hold the model; None: the world). Returns the final
    checkpoint path. ``rank_batches``: this rank's rollout batches not yet trained on (disaggregated mode),
    stored in the checkpoint as ``batches-rank{r}.pt``.

    On a failed write (disk full, I/O error) the temporary directory is removed and every rank raises
    ``CheckpointError``; the previous checkpoint stays the newest complete one. Pruning keeps the last
    ``keep_last`` checkpoints of this run (same ``run_id``), never the one just written.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    root = checkpoint_root(output_dir)
    final = os.path.join(root, f"step-{step:08d}")
    tmp = os.path.join(root, f".tmp-step-{step:08d}")

    def fail(e: BaseException):
        if _rank(group) == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(output_dir, warn=lambda m: None)
        try:
            free = f" ({shutil.disk_usage(output_dir).free / 2**20:.1f} MiB free there now)"
        except OSError:
            free = ""
        newest = f"The newest complete checkpoint is {previous}" if previous else "No complete checkpoint exists"
        return CheckpointError(f"could not save the checkpoint of step {step} in {root}{free}: {_cause(e)}. "
                               f"{newest}; free some space (or fix the disk) and continue with --resume.")

    error = None
    if _rank(group) == 0:
        try:
            os.makedirs(root, exist_ok=True)
            if os.path.exists(tmp):
                shutil.rmtree(tmp)  # left by a run killed mid-write
            os.makedirs(tmp)
        except OSError as e:
            error = e
    if (error := from_rank0(error, group)) is not None:
        raise fail(error)
    # Before the first optimizer step AdamW has no state, and get_state_dict creates it by a zero-lr step
    # (torch's _init_optim_state) that sets its step counter to 1: the first real update would then use
    # t=2 bias correction and come out about 0.74x as large. The state is emptied again after saving, and
    # the checkpoint records that no step was taken, so that a resume empties it too.
    stepped = bool(optimizer.state)
    msd, osd = get_state_dict(model, optimizer)
    trainer_state = dict(trainer_state, optimizer_stepped=stepped)
    try:
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=tmp, process_group=group)  # gathers every rank's errors
        # Per-rank RNG state: lead_fast's own sampling derives from (seed, step, rank), but a model may draw
        # from the global generators (dropout).
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, os.path.join(tmp, f"rng-rank{_rank(group)}.pt"))
        if rank_batches is not None:
            torch.save(rank_batches, os.path.join(tmp, f"batches-rank{_rank(group)}.pt"))
        local_error = None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # DCP's CheckpointException is a BaseException; every rank must hear of it
        local_error = e
    finally:
        if not stepped:
            optimizer.state.clear()
    errors = [local_error]
    if dist.is_initialized():
        errors = [None] * dist.get_world_size(group)
        dist.all_gather_object(errors, None if local_error is None else _cause(local_error), group=group)
        errors = [e if e is None or isinstance(e, BaseException) else RuntimeError(e) for e in errors]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise fail(local_error or first)
    after_shards_written(step, _rank(group))
    if _rank(group) == 0:
        try:
            files = {n: os.path.getsize(os.path.join(tmp, n)) for n in sorted(os.listdir(tmp))}
            with open(os.path.join(tmp, STATE_FILE), "w") as f:
                json.dump(dict(trainer_state, files=files), f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            if os.path.exists(final):
                shutil.rmtree(final)
            os.rename(tmp, final)  # the checkpoint exists, complete, or not at all
        except OSError as e:
            error = e
        if error is None:
            _prune(output_dir, keep_last, trainer_state.get("run_id"), final)
    if (error := from_rank0(error, group)) is not None:
        raise fail(error)
    return final


def _prune(output_dir: str, keep_last: int, run_id: str | None, just_written: str) -> None:
    if keep_last <= 0:
        return
    mine = []   # this run's intact checkpoints: a damaged one never counts toward keep_last, nor is deleted
    for _, path in list_checkpoints(output_dir):
        try:
            if read_state(path).get("run_id") == run_id and damage(path) is None:
                mine.append(path)
        except CheckpointError:
            pass
    for path in mine[:-keep_last]:
        if path != just_written:
            shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(path: str, model, optimizer, group=None, batch_types: tuple = ()) -> dict:
    """Collective over ``group``. Loads model and optimizer state in place (any world size) and returns
    trainer_state, with this rank's stored rollout batches under ``batches`` (None when there are none)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    state = read_state(path)
    msd, osd = get_state_dict(model, optimizer)
    sd = {"model": msd, "optim": osd}
    dcp.load(sd, checkpoint_id=path, process_group=group)
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    if state.get("optimizer_stepped") is False:     # saved before the first step (see save_checkpoint)
        optimizer.state.clear()
    batches = os.path.join(path, f"batches-rank{_rank(group)}.pt")
    state["batches"] = load_batches(batches, batch_types) if os.path.exists(batches) else None
    rng = os.path.join(path, f"rng-rank{_rank(group)}.pt")
    if os.path.exists(rng):
        saved = torch.load(rng, weights_only=True)
        torch.set_rng_state(saved["torch"])
        if "cuda" in saved and torch.cuda.is_available():
            torch.cuda.set_rng_state(saved["cuda"])
    return state


class Checkpointer:
    """When to save: every ``save_every`` steps, at the last step, and when forced (a stop request).

    ``state`` returns the trainer's own state (step excluded) at save time. ``run_id`` marks this run's
    checkpoints (a resumed run keeps its id), so pruning never touches another run's.
    """

    def __init__(self, output_dir: str, *, save_every: int, keep_last: int, model, optimizer,
                 state: Callable[[], dict], group=None, log=print, batch_types: tuple = ()):
        self.output_dir, self.save_every, self.keep_last = output_dir, save_every, keep_last
        self.batch_types = batch_types      # what stored rollout batches may hold (``load_batches``)
        self.model, self.optimizer, self.state, self.log = model, optimizer, state, log
        self.group = group      # the ranks that hold the model (None: the world)
        self.run_id = from_rank0(uuid.uuid4().hex, group)

    def due(self, step: int, *, last: bool, force: bool = False) -> bool:
        """Whether ``maybe_save`` will save after ``step``."""
        return bool(force or last or (self.save_every and step % self.save_every == 0))

    def maybe_save(self, step: int, *, last: bool, force: bool = False, rank_batches=None) -> str | None:
        """Collective. Saves after ``step`` when due; returns the checkpoint path, or None."""
        if not self.due(step, last=last, force=force):
            return None
        t0 = time.time()
        path = save_checkpoint(self.output_dir, step, self.model, self.optimizer,
                               dict(step=step, run_id=self.run_id, **self.state()), keep_last=self.keep_last,
                               group=self.group, rank_batches=rank_batches)
        self.log(f"saved {path} in {time.time() - t0:.1f}s")
        return path

    def saved_for(self, step: int, failure: str, *, started_at: int, rank_batches=None) -> RolloutError:
        """Collective. Generating or grading failed after ``step`` completed steps (the run started or resumed
        at ``started_at``): saves step ``step`` unless it is on disk already, and returns the error every rank
        raises, which says so."""
        on_disk = from_rank0(dict(list_checkpoints(self.output_dir)).get(step) if _rank(self.group) == 0 else None,
                             self.group)
        if on_disk:
            kept = f"step {step}'s checkpoint is on disk ({on_disk})"
        elif step > started_at:
            kept = f"step {step} was saved first ({self.maybe_save(step, last=False, force=True, rank_batches=rank_batches)})"
        else:
            kept = "no step had completed, so there was nothing to save"
        return RolloutError(f"the rollouts of step {step + 1} failed ({failure}); {kept}. Remove the cause, "
                            f"then continue with --resume.")

    def resume(self) -> dict | None:
        """Collective. Loads the newest intact checkpoint into the model and optimizer and returns its
        trainer state (with ``path``), or None when there is none. Damaged ones are skipped, warned about."""
        candidates = [p for _, p in reversed(list_checkpoints(self.output_dir))]
        for path in candidates:
            broken = from_rank0(damage(path, self.batch_types) if _rank(self.group) == 0 else None, self.group)
            if broken:
                self.log(f"WARNING: skipping damaged checkpoint {path}: {broken}")
                continue
            try:
                state = load_checkpoint(path, self.model, self.optimizer, self.group, self.batch_types)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as e:  # DCP raises its CheckpointException (a BaseException) on every rank
                self.log(f"WARNING: skipping checkpoint {path}: it could not be loaded ({_cause(e)})")
                continue
            self.run_id = state.get("run_id", self.run_id)
            self.log(f"resumed from {path} at step {state['step']}")
            return dict(state, path=path)
        self.log(f"--resume: no complete checkpoint in {checkpoint_root(self.output_dir)}; starting fresh")
        return None
