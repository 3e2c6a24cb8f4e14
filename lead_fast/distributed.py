"""Process-group set-up and the few collectives the loop needs, by name rather than by position."""

from __future__ import annotations

import os
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from lead_fast.errors import LeadFastError

T = TypeVar("T")


def setup_distributed() -> tuple[int, int, torch.device]:
    """``(rank, world size, device)``; NCCL on CUDA, gloo on CPU. Without torchrun: a world of one."""
    # Plain `python -m lead_fast.train` (or a call from Python): a world of one on an in-memory store. No
    # TCP port to pick, and nothing written to os.environ, which child processes would inherit as a
    # rendezvous of their own (a port that is taken: EADDRINUSE, seen in the test suite).
    alone = "RANK" not in os.environ
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kw = dict(store=dist.HashStore(), rank=0, world_size=1) if alone else {}
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None, **kw)
    return dist.get_rank(), dist.get_world_size(), device


def all_sum(values: dict[str, float | torch.Tensor], device: torch.device) -> dict[str, float]:
    """Sum each named value (a number or a 0-d tensor) over ranks: one collective, float64. Every rank
    passes the same names."""
    names = sorted(values)
    t = torch.stack([torch.as_tensor(values[k], dtype=torch.float64).to(device) for k in names])
    dist.all_reduce(t)
    return dict(zip(names, t.tolist()))


def all_max(value: int | float, device: torch.device) -> int | float:
    """The largest ``value`` over ranks, of the same type."""
    t = torch.tensor([value], dtype=torch.float64 if isinstance(value, float) else torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return type(value)(t.item())


def step_seed(seed: int, step: int, rank: int, salt: int = 0) -> int:
    """The seed of one step's sampling on one rank (``salt`` separates uses within a step)."""
    return (seed * 1_000_003 + step * 10_007 + rank * 101 + salt) % (2**62)


def from_rank0(value):
    """Rank 0's ``value`` on every rank (a collective, and so a barrier); the value itself without a
    process group."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_rank0(fn: Callable[[], T]) -> T:
    """Collective: run ``fn`` on rank 0 only (shared files: the output directory, a cache) and return its
    result on every rank. A ``LeadFastError`` it raises is raised on every rank, so all ranks stop together
    with the same message; any other exception keeps its traceback on rank 0 and stops the others too."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    outcome, crash = None, None
    if rank == 0:
        try:
            outcome = ("ok", fn())
        except LeadFastError as e:
            outcome = ("error", (type(e), str(e)))
        except BaseException as e:  # a bug, or Ctrl-C: rank 0 keeps its traceback, the others must not wait
            outcome, crash = ("crash", f"{type(e).__name__}: {e}"), e
    kind, value = from_rank0(outcome)
    if kind == "error":
        cls, message = value
        raise cls(message)
    if kind == "crash":
        if crash is not None:
            raise crash
        raise RuntimeError(f"rank 0 failed ({value}); see its traceback")
    return value
