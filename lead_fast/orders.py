"""Disaggregated mode's control wire: the lead trainer rank tells the rollout ranks what to do next, by
broadcast over the sync group (``Placement.sync_group``), and streams them the weights.

An order is three integers: what to do (``WEIGHTS`` | ``EVAL`` | ``STOP``, combinable; ``STOP | ABORT`` after a
failed rollout: stop without waiting for the batches no trainer will take), the version of the
weights (the number of training steps they have had) and the next batch to generate (read from the first
order only: a resumed run starts after the batches its checkpoint holds). With ``WEIGHTS`` the full tensors
follow, one broadcast each, in ``PolicyWithHead.hf_named_tensors`` order; their names, shapes and dtypes go
once, with the first order. Nothing is staged through files.

Both sides block: the rollout ranks read an order only when they have nothing they are allowed to
generate, and the trainer's broadcast waits for them. That fixed order is what makes the schedule
deterministic (batch ``j`` is generated with version ``max(0, j - max_staleness)``), and so resumable.

The other way, a rollout rank sends each trainer rank its share of a step as a ``Batch``
(``lead_fast.distributed.ObjectPost``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.distributed as dist

from lead_fast.placement import Placement
from lead_fast.rollout.base import Completion
from lead_fast.rollout.graded import GradedRollouts

WEIGHTS, EVAL, STOP, ABORT = 1, 2, 4, 8


@dataclass(frozen=True)
class Order:
    kind: int
    """``WEIGHTS`` | ``EVAL`` | ``STOP`` (| ``ABORT``): load the weights that follow, then evaluate them, then
    stop (without waiting for undelivered batches)."""
    version: int
    """Training steps the weights have had (the weights sent with this order, or the ones held)."""
    next_batch: int
    """The next batch (step index) to generate; read from the first order only."""


class OrderWire:
    """One side of the wire: the lead trainer calls ``send``, rollout ranks ``receive``."""

    def __init__(self, placement: Placement, device: torch.device):
        self.p, self.device = placement, device
        self._layout: list[tuple[str, tuple[int, ...], torch.dtype]] | None = None

    def send(self, order: Order, named_tensors: Iterable[tuple[str, torch.Tensor]] | None = None) -> None:
        """Lead trainer. ``named_tensors`` (with ``WEIGHTS``) is drained here; the other trainer ranks must
        drain theirs in step (``drain``): each full tensor is an FSDP all-gather."""
        header = torch.tensor([order.kind, order.version, order.next_batch], dtype=torch.int64, device=self.device)
        dist.broadcast(header, self.p.lead_trainer, group=self.p.sync_group)
        if not order.kind & WEIGHTS:
            return
        tensors = list(named_tensors) if self._layout is None else named_tensors
        if self._layout is None:
            self._layout = [(n, tuple(t.shape), t.dtype) for n, t in tensors]
            dist.broadcast_object_list([self._layout], self.p.lead_trainer, group=self.p.sync_group)
        for _, t in tensors:
            dist.broadcast(t.contiguous(), self.p.lead_trainer, group=self.p.sync_group)

    @staticmethod
    def drain(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """A trainer rank other than the lead: take part in the all-gathers of a ``WEIGHTS`` order."""
        for _ in named_tensors:
            pass

    def receive(self) -> tuple[Order, Iterator[tuple[str, torch.Tensor]] | None]:
        """Rollout rank. The order and, with ``WEIGHTS``, the tensors as an iterator the engine must drain
        before the next ``receive`` (each arrives by its own broadcast)."""
        header = torch.zeros(3, dtype=torch.int64, device=self.device)
        dist.broadcast(header, self.p.lead_trainer, group=self.p.sync_group)
        order = Order(*(int(x) for x in header.tolist()))
        if not order.kind & WEIGHTS:
            return order, None
        if self._layout is None:
            box = [None]
            dist.broadcast_object_list(box, self.p.lead_trainer, group=self.p.sync_group)
            self._layout = box[0]
        return order, self._tensors()

    def _tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, shape, dtype in self._layout:
            t = torch.empty(shape, dtype=dtype, device=self.device)
            dist.broadcast(t, self.p.lead_trainer, group=self.p.sync_group)
            yield name, t


@dataclass
class Batch:
    """One trainer share of one step's rollouts, graded: what a rollout rank sends a trainer rank, and what
    a checkpoint stores while it waits to be trained on."""

    step: int
    """The step (batch index) it belongs to."""
    version: int
    """Training steps the weights that generated it had had (``step - version`` is its staleness)."""
    idx: list[int]
    """Its prompts, as indices into the training prompts."""
    rollouts: GradedRollouts | None
    wait_s: float = 0.0
    """Seconds the trainer rank waited for it."""
    busy: tuple[float, float] = (0.0, 0.0)
    """When its rollout rank started and finished generating and grading the step (wall clock)."""
    stop: bool = False
    """Its rollout rank had been asked to stop (SIGTERM / SIGINT)."""
    failure: str | None = None
    """Its rollout rank could not make it (``"rank R: Type: message"``; ``rollouts`` is then None): the trainer
    ranks save what they have and stop the run."""


# what a checkpoint's stored batches may hold besides tensors and plain values (``checkpoint.load_batches``)
BATCH_TYPES = (Batch, GradedRollouts, Completion)
