"""Disaggregated mode (``rollout.mode disaggregated``): the rollout ranks' loop and the trainer ranks' loop.

Rollout ranks run ``serve_rollouts``: generate and grade each trainer rank's share of a batch, send it, and
between batches follow the lead trainer's orders (new weights, eval, stop). Trainer ranks run
``train_disaggregated``: the trainer's steps 4-8 (``Trainer.learn``) on batches as they arrive, up to
``rollout.max_staleness`` updates old. Batch ``j`` is always generated with the weights of step
``max(0, j - max_staleness)``, so the run is deterministic; a checkpoint keeps the batches already made with
older weights than its own, so a resumed run is the same run. The wire is ``lead_fast/orders.py``.

Both loops take the ``lead_fast.trainer.Trainer`` (``tr``) whose placement, engine, policy, checkpointer and
metrics they drive (not imported here: the trainer imports this module).
"""

from __future__ import annotations

import time
import traceback
from collections import deque

from lead_fast.distributed import ObjectPost, all_max, first_failure
from lead_fast.errors import LeadFastError, RolloutError
from lead_fast.metrics import eval_metrics
from lead_fast.orders import ABORT, EVAL, STOP, WEIGHTS, Batch, Order, OrderWire
from lead_fast.preemption import StopRequest

BATCH_TAG, EVAL_TAG = 1, 2     # rollout rank -> trainer rank messages (lead_fast.distributed.ObjectPost)


def after_share(batch: int, share: int) -> None:
    """Called on a rollout rank after it generated and graded trainer share ``share`` of batch ``batch``,
    before sending it: a seam for tests (``tests/helpers/faults.py`` preempts a run there). Does nothing."""


def serve_rollouts(tr) -> None:
    """A rollout rank: generate every batch it is allowed to (its weights at most ``max_staleness``
    steps behind the batch), send each trainer share to its trainer; when it may not, take the lead
    trainer's next order (weights, eval, stop). Runs until told to stop."""
    cfg, p = tr.cfg, tr.place
    wire, post = OrderWire(p, tr.device), ObjectPost(p.object_group)
    shares, staleness = p.shares(tr.rank), cfg.rollout.max_staleness
    version = next_batch = None
    with StopRequest() as stop:
        while True:
            if next_batch is not None and next_batch < cfg.run.max_steps and next_batch - staleness <= version:
                t0, made = time.time(), []
                try:
                    for t in shares:
                        made.append((t, *tr.generate(next_batch, t, p.train_world)))
                        after_share(next_batch, t)
                except Exception as e:      # noqa: BLE001  (the engine's process died, say: the trainers save)
                    _fail(tr, wire, post, shares, next_batch, version, _said(tr, e), e)
                busy = (t0, time.time())
                for t, idx, rollouts in made:
                    post.send(Batch(next_batch, version, idx, rollouts, 0.0, busy, stop.requested),
                              p.trainer_ranks[t], BATCH_TAG)
                next_batch += 1
                continue
            order, tensors = wire.receive()
            if order.kind & WEIGHTS:
                tr.engine.update_weights(tensors)
                version = order.version
                next_batch = order.next_batch if next_batch is None else next_batch
            if order.kind & EVAL:
                t0 = time.time()
                try:
                    counts = tr.eval_shares(shares, p.train_world)
                except Exception as e:      # noqa: BLE001  (as a failed batch: the trainers save and stop)
                    failure = _said(tr, e)
                    post.send(dict(failure=failure), p.lead_trainer, EVAL_TAG)
                    if order.kind & STOP:
                        raise RolloutError(failure) from e
                    _fail(tr, wire, post, shares, next_batch, version, failure, e)
                post.send(dict(counts=counts, seconds=time.time() - t0), p.lead_trainer, EVAL_TAG)
            if order.kind & STOP:
                break
    if not order.kind & ABORT:       # after a failed rollout some batches will never be taken
        post.flush()


def _fail(tr, wire: OrderWire, post: ObjectPost, shares: list[int], batch: int, version: int, failure: str,
          error: Exception):
    """A rollout rank that could not make batch ``batch``: tells its trainer ranks (they save the steps they
    completed), follows their orders without acting on them until STOP, then raises ``RolloutError``."""
    for t in shares:
        post.send(Batch(batch, version, [], None, failure=failure), tr.place.trainer_ranks[t], BATCH_TAG)
    while True:
        order, tensors = wire.receive()
        for _ in tensors or ():      # weights sent before the trainers heard: taken off the wire, not loaded
            pass
        if order.kind & EVAL:
            post.send(dict(failure=failure), tr.place.lead_trainer, EVAL_TAG)
        if order.kind & STOP:
            raise RolloutError(failure) from error


def _said(tr, error: Exception) -> str:
    """A rollout rank's failure as the trainers report it (a bug's traceback printed here, on its rank)."""
    if not isinstance(error, LeadFastError):
        traceback.print_exc()
    return f"rank {tr.rank}: {type(error).__name__}: {error}"


def train_disaggregated(tr) -> None:
    """A trainer rank: take each step's share as it arrives and learn from it; after each step, the lead
    sends the rollout ranks the new weights (all trainer ranks gather them). Before a checkpoint, it first
    takes the batches already generated with older weights than the checkpoint's (they cannot be made
    again after a resume) and stores them in it."""
    cfg, p = tr.cfg, tr.place
    lead, group = tr.rank == p.lead_trainer, p.train_group
    wire, post = OrderWire(p, tr.device), ObjectPost(p.object_group)
    source = p.rollout_ranks[p.train_rank % len(p.rollout_ranks)]
    ready: deque[Batch] = deque(tr.resumed_batches)
    heard_stop = False

    def receive() -> Batch:
        nonlocal heard_stop
        t0 = time.time()
        batch = post.receive(source, BATCH_TAG)
        batch.wait_s = time.time() - t0
        heard_stop |= batch.stop
        return batch

    def order(kind: int, step: int) -> None:
        """The lead sends, every trainer rank gathers the weights with it."""
        tensors = tr.policy.hf_named_tensors() if kind & WEIGHTS else None
        if lead:
            wire.send(Order(kind, step, step + len(ready)), tensors)
        elif tensors is not None:
            wire.drain(tensors)

    def eval_row() -> dict:
        """The eval counts of every rollout rank (lead only; the others log nothing)."""
        if not lead:
            return {}
        parts = [post.receive(r, EVAL_TAG) for r in p.rollout_ranks]
        failed = [x["failure"] for x in parts if "failure" in x]
        if failed:
            tr.tlog(f"WARNING: no eval for this row: {failed[0]}")
            return {}
        tot = {k: sum(x["counts"][k] for x in parts) for k in parts[0]["counts"]}
        return eval_metrics(tot, max(x["seconds"] for x in parts))

    start = tr.start_step
    first_eval = bool(cfg.run.eval_every) and start == 0
    order(WEIGHTS | (EVAL if first_eval else 0), start)
    if first_eval:
        tr.metrics.log({"step": 0, **eval_row()})
    if start >= cfg.run.max_steps:      # nothing left to train (a finished run resumed): let them go
        order(STOP, start)
    pending = None         # a row waiting for its eval, which the rollout ranks run while this rank trains
    t_end = time.time()
    with StopRequest() as stop:
        for step in range(start, cfg.run.max_steps):
            batch = ready.popleft() if ready else receive()
            failure = first_failure(batch.failure, tr.device, group)
            if failure is not None:           # no rollouts for this step: save the steps done, stop the rollouts
                if pending is not None:
                    tr.metrics.log({**pending, **eval_row()})
                order(STOP | ABORT, step)
                raise tr.checkpointer.saved_for(step, failure, started_at=start, rank_batches=list(ready))
            if batch.step != step:
                raise RuntimeError(f"trainer rank {tr.rank} expected the batch of step {step}, got {batch.step}")
            row = {"step": step + 1, **tr.learn(step, batch, t_end, 0.0)}
            t_end = time.time()     # a step's time runs from the end of one update's metrics to the next's
            last = step + 1 == cfg.run.max_steps
            interrupted = stop.agreed(tr.device, group, elsewhere=heard_stop)
            stopping = last or interrupted
            eval_due = bool(cfg.run.eval_every) and ((step + 1) % cfg.run.eval_every == 0 or last)
            saving = tr.checkpointer.due(step + 1, last=last, force=interrupted)
            if saving:
                while len(ready) < min(cfg.rollout.max_staleness, cfg.run.max_steps - step - 1) and not (
                        ready and ready[-1].failure):
                    ready.append(receive())
                failure = first_failure(next((b.failure for b in ready if b.failure), None), tr.device, group)
                if failure is not None:     # keep the batches every trainer rank has whole; save, then stop
                    good = -all_max(-next((i for i, b in enumerate(ready) if b.failure), len(ready)), tr.device, group)
                    ready = deque(list(ready)[:good])
                    stopping, eval_due = True, False
            kind = ((WEIGHTS if eval_due or not stopping else 0) | (EVAL if eval_due else 0)
                    | (STOP if stopping else 0) | (ABORT if failure else 0))
            t_sync = time.time()
            order(kind, step + 1)
            row["time/sync_s"] = time.time() - t_sync
            if pending is not None:
                pending.update(eval_row())
                tr.metrics.log(pending)
                pending = None
            if eval_due and not saving:
                pending = row
            else:
                tr.metrics.log({**row, **(eval_row() if eval_due else {})})
            tr.checkpointer.maybe_save(step + 1, last=last, force=interrupted, rank_batches=list(ready))
            if failure is not None:
                raise tr.checkpointer.saved_for(step + 1, failure, started_at=start)     # saved just above
            if interrupted:
                tr.tlog(f"stopped by signal after step {step + 1}; continue with --resume")
            if stopping:
                break
