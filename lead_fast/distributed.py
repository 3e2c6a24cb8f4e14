"""Process-group set-up and the few collectives the loop needs, by name rather than by position."""

from __future__ import annotations

import atexit
import os
import pickle
import sys
import traceback
from typing import Callable, NoReturn, TypeVar

import torch
import torch.distributed as dist

from lead_fast.errors import LeadFastError, RolloutError

T = TypeVar("T")


def setup_distributed(device_type: str | None = None) -> tuple[int, int, torch.device]:
    """``(rank, world size, device)``; NCCL on CUDA, gloo on CPU. Without torchrun: a world of one.
    ``device_type``: cuda or cpu (None: cuda when there is one)."""
    # Plain `python -m lead_fast.train` (or a call from Python): a world of one on an in-memory store. No
    # TCP port to pick, and nothing written to os.environ, which child processes would inherit as a
    # rendezvous of their own (a port that is taken: EADDRINUSE, seen in the test suite).
    alone = "RANK" not in os.environ
    if device_type == "cuda" or (device_type is None and torch.cuda.is_available()):
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kw = dict(store=dist.HashStore(), rank=0, world_size=1) if alone else {}
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None, **kw)
    return dist.get_rank(), dist.get_world_size(), device


def all_sum(values: dict[str, float | torch.Tensor], device: torch.device, group=None) -> dict[str, float]:
    """Sum each named value (a number or a 0-d tensor) over the ranks of ``group`` (None: all): one
    collective, float64. Every rank passes the same names."""
    names = sorted(values)
    t = torch.stack([torch.as_tensor(values[k], dtype=torch.float64).to(device) for k in names])
    dist.all_reduce(t, group=group)
    return dict(zip(names, t.tolist()))


def all_max(value: int | float, device: torch.device, group=None) -> int | float:
    """The largest ``value`` over the ranks of ``group`` (None: all), of the same type."""
    t = torch.tensor([value], dtype=torch.float64 if isinstance(value, float) else torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return type(value)(t.item())


def together(work: Callable[[], T], device: torch.device, group=None) -> T:
    """``work()`` that each rank of ``group`` (None: every rank) does on its own: generating, grading. If it
    fails on any rank, every rank raises ``RolloutError`` naming the first failing rank and its error, before
    the next collective (a rank that failed and left would make the others wait in it forever). A bug's
    traceback is printed by its own rank. One int all-reduce when nothing failed."""
    try:
        out, error = work(), None
    except Exception as e:       # noqa: BLE001  (said by every rank)
        out, error = None, e
        if not isinstance(e, LeadFastError):
            traceback.print_exc()
    failure = first_failure(error, device, group)
    if failure is not None:
        raise RolloutError(failure) from error
    return out


def first_failure(error: BaseException | str | None, device: torch.device, group=None) -> str | None:
    """Collective over ``group`` (None: every rank): None when no rank has an ``error``, else the first failing
    rank's, on every rank: an exception as ``"rank R: Type: message"``, a text (a failure another rank
    reported) as it is. One int all-reduce when nothing failed."""
    if all_max(int(error is not None), device, group) == 0:
        return None
    texts: list[str | None] = [None] * dist.get_world_size(group)
    text = error if isinstance(error, str) or error is None else f"rank {dist.get_rank()}: {type(error).__name__}: {error}"
    dist.all_gather_object(texts, text, group=group)
    return next(t for t in texts if t is not None)


class ObjectPost:
    """Picklable objects sent point to point without waiting for the receiver (``isend``); the buffers are
    kept until ``flush`` (or a later ``send``) sees them delivered. ``receive`` blocks. Messages between two
    ranks with the same tag arrive in the order they were sent."""

    def __init__(self, group=None):
        self.group = group
        self._pending: list[tuple[list, torch.Tensor, torch.Tensor]] = []

    def send(self, obj, dst: int, tag: int) -> None:
        data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
        size = torch.tensor([data.numel()], dtype=torch.int64)
        works = [dist.isend(size, dst, group=self.group, tag=tag), dist.isend(data, dst, group=self.group, tag=tag)]
        self._pending = [p for p in self._pending if not all(w.is_completed() for w in p[0])]
        self._pending.append((works, size, data))

    def receive(self, src: int, tag: int):
        size = torch.zeros(1, dtype=torch.int64)
        dist.recv(size, src, group=self.group, tag=tag)
        data = torch.empty(int(size.item()), dtype=torch.uint8)
        dist.recv(data, src, group=self.group, tag=tag)
        return pickle.loads(data.numpy().tobytes())

    def flush(self) -> None:
        for works, _, _ in self._pending:
            for w in works:
                w.wait()
        self._pending = []


def step_seed(seed: int, step: int, rank: int, salt: int = 0) -> int:
    """The seed of one step's sampling on one rank (``salt`` separates uses within a step)."""
    return (seed * 1_000_003 + step * 10_007 + rank * 101 + salt) % (2**62)


def from_rank0(value, group=None):
    """Rank 0's ``value`` (the first rank of ``group``; None: the world) on every rank of it (a collective,
    and so a barrier); the value itself without a process group."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, group=group, group_src=0)
    return box[0]


def on_rank0(fn: Callable[[], T], group=None) -> T:
    """Collective (over ``group``; None: the world): run ``fn`` on its rank 0 only (shared files: the output
    directory, a cache) and return its result on every rank. A ``LeadFastError`` it raises is raised on
    every rank, so all ranks stop together with the same message; any other exception keeps its traceback
    on rank 0 and stops the others too."""
    rank = dist.get_rank(group) if dist.is_initialized() else 0
    outcome, crash = None, None
    if rank == 0:
        try:
            outcome = ("ok", fn())
        except LeadFastError as e:
            outcome = ("error", (type(e), str(e)))
        except BaseException as e:  # a bug, or Ctrl-C: rank 0 keeps its traceback, the others must not wait
            outcome, crash = ("crash", f"{type(e).__name__}: {e}"), e
    kind, value = from_rank0(outcome, group)
    if kind == "error":
        cls, message = value
        raise cls(message)
    if kind == "crash":
        if crash is not None:
            raise crash
        raise RuntimeError(f"rank 0 failed ({value}); see its traceback")
    return value


def exit_process(code: int) -> NoReturn:
    """End a process that ran collectives: the exit handlers run (grading workers, loggers), output is
    flushed, and the process leaves without finalizing the interpreter.

    Why: gloo's worker threads outlive ``destroy_process_group`` (FSDP2's device mesh keeps the group), and
    one may still be releasing the last collective's work, whose tensors' Python objects need the GIL. If
    the interpreter is finalizing at that moment, Python cancels the thread inside C++ code and the process
    aborts ("terminate called without an active exception", exit -6), after a run that succeeded. A helper
    that exited right after a barrier did so about 1 time in 20 on 2 cores (gdb: ~AsyncBarrierWork ->
    decref_pyobject -> take_gil -> pthread_exit). Without finalization there is nothing to race with."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
