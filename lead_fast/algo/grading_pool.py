"""``grade_batch``: grading in worker processes, each item under a hard deadline.

A response that makes sympy spin inside C code (where math-verify's ``signal.alarm`` cannot interrupt)
gets its worker killed and replaced, and is graded ``0``. Workers are plain subprocesses
(``python -c`` importing this module), not ``multiprocessing`` children: those re-import the parent's
``__main__``, which fails for a script fed on stdin, ``python -c`` or a notebook. They talk over two
pipes with ``multiprocessing.connection.Connection`` and import nothing but this package's grading code
and math-verify (not torch).

The pool is the one piece of process-global state in ``lead_fast.algo``: created on first use, reused
across calls, closed at exit.
"""

from __future__ import annotations

import atexit
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for

from lead_fast.algo.grading import WRONG, GradingRules
from lead_fast.errors import GradingStartError

_READY = "ready"


def worker_main(read_fd: int, write_fd: int) -> None:
    """A worker's loop: receives ``(index, response, answer, GradingRules)``, sends
    ``(index, outcome)``; ``None`` or a closed pipe ends it. Start-up errors are sent, not just printed."""
    import signal
    import traceback

    conn_in, conn_out = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    # Ctrl-C reaches the whole process group; the trainer decides when to stop, not its graders.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import logging

        import math_verify  # noqa: F401  (imported before "ready": deadlines start after imports)

        logging.getLogger("math_verify").setLevel(logging.ERROR)
    except BaseException:
        conn_out.send(("error", traceback.format_exc(limit=3).strip()))
        return
    conn_out.send(_READY)

    def grade(msg):
        idx, resp, ans, rules = msg
        try:
            out = rules.grade(resp, ans)
        except Exception:  # a non-string item, say: wrong, and the batch goes on
            out = WRONG
        conn_out.send((idx, out))

    serve(conn_in, grade)


def serve(conn_in: Connection, handle) -> None:
    """A worker's loop: ``handle`` each message received until ``None`` or a closed pipe."""
    while True:
        try:
            msg = conn_in.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        handle(msg)


def spawn(main: str) -> tuple[subprocess.Popen, Connection, Connection]:
    """A plain subprocess running ``main(read_fd, write_fd)`` (``"module:function"``), and its pipes as
    ``(process, connection to send on, connection to receive on)``."""
    module, fn = main.split(":")
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", f"from {module} import {fn}; {fn}({to_child_r}, {from_child_w})"],
                            pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL)
    os.close(to_child_r)
    os.close(from_child_w)
    return proc, Connection(to_child_w, readable=False), Connection(from_child_r, writable=False)


class WorkerProcess:
    """A ``spawn``ed worker: its process (``proc``) and connections (``send_conn``, ``conn``)."""

    def __init__(self, main: str):
        self.proc, self.send_conn, self.conn = spawn(main)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.send_conn.close()
        self.conn.close()


class _Worker(WorkerProcess):
    def __init__(self):
        super().__init__("lead_fast.algo.grading_pool:worker_main")
        self.ready = False
        self.item: int | None = None  # index of the item being graded
        self.deadline = math.inf


@dataclass
class BatchResult:
    outcomes: list[int]
    """One outcome code per response."""
    timeouts: int
    """Items killed at their deadline (graded 0)."""


class GradingPool:
    """Worker processes that grade with a hard per-item deadline; reused across calls."""

    START_TIMEOUT_S = 120.0
    """A worker that cannot even import math-verify in this long is an error."""

    def __init__(self, num_workers: int):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.num_workers = num_workers
        self._workers = [_Worker() for _ in range(num_workers)]

    def close(self) -> None:
        for w in self._workers:
            try:
                w.send_conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for w in self._workers:
            try:
                w.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
            w.kill()
        self._workers = []

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers[self._workers.index(w)] = _Worker()

    def grade(self, responses: list[str], answers: list[str], rules: GradingRules, progress=None) -> BatchResult:
        n = len(responses)
        results: list[int] = [WRONG] * n
        todo = iter(range(n))
        pending, timeouts = n, 0
        started = time.monotonic()

        def assign(w: _Worker) -> None:
            i = next(todo, None)
            w.item = i
            if i is not None:
                w.deadline = time.monotonic() + rules.timeout_s
                w.send_conn.send((i, responses[i], answers[i], rules))

        for w in self._workers:
            if w.ready:
                assign(w)
        while pending:
            live = [w for w in self._workers if not w.ready or w.item is not None]
            deadline = min((w.deadline for w in live if w.item is not None), default=time.monotonic() + 1.0)
            ready = wait_for([w.conn for w in live], timeout=max(0.0, deadline - time.monotonic()))
            for w in live:
                if w.conn in ready:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):  # the worker died (out of memory, say)
                        if w.item is not None:
                            results[w.item] = WRONG
                            pending -= 1
                        elif time.monotonic() - started > self.START_TIMEOUT_S:
                            raise GradingStartError(
                                f"grading workers keep exiting before they are ready (last exit code "
                                f"{w.proc.poll()}); see their messages above") from None
                        self._replace(w)
                        continue
                    if isinstance(msg, tuple) and msg[0] == "error":
                        raise GradingStartError(f"a grading worker could not start:\n{msg[1]}")
                    if msg == _READY:
                        w.ready = True
                    else:
                        idx, out = msg
                        results[idx] = out
                        pending -= 1
                        if progress is not None:
                            progress.update(1)
                    assign(w)
                elif w.item is not None and time.monotonic() >= w.deadline:
                    results[w.item] = WRONG  # a timeout counts as wrong
                    timeouts += 1
                    pending -= 1
                    self._replace(w)
        return BatchResult(results, timeouts)


_POOL: GradingPool | None = None


def default_workers() -> int:
    """This process's CPU share, at most 16."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


def get_pool(num_workers: int | None = None) -> GradingPool:
    """The process-wide grading pool (created on first use, recreated when asked for another size)."""
    global _POOL
    n = num_workers or default_workers()
    if _POOL is None or _POOL.num_workers != n:
        if _POOL is not None:
            _POOL.close()
        _POOL = GradingPool(n)
    return _POOL


@atexit.register
def _close_pool() -> None:
    if _POOL is not None:
        _POOL.close()


def grade_batch(responses: list[str], answers: list[str], *, timeout_s: float = 5.0,
                num_workers: int | None = None, require_think: bool = False, answer_from: str = "after_think",
                unboxed_is_wrong: bool = False, rules: GradingRules | None = None, return_timeouts: bool = False,
                progress: bool = False) -> list[int] | tuple[list[int], int]:
    """Grade many responses in parallel worker processes; each item costs at most ``timeout_s``.

    ``require_think``, ``answer_from`` and ``unboxed_is_wrong`` are ``grade``'s; ``rules`` (a
    ``GradingRules``), when given, replaces them and ``timeout_s``. An item that runs past
    its deadline has its worker killed and replaced, and is graded ``0``. With ``return_timeouts=True``
    returns ``(outcomes, number of items that timed out)``. ``progress``: a bar with ETA for a batch of
    256 or more, when stderr is a terminal.
    """
    if rules is None:
        try:
            rules = GradingRules(require_think=require_think, answer_from=answer_from,
                                 unboxed_is_wrong=unboxed_is_wrong, timeout_s=timeout_s)
        except ValueError as e:
            raise ValueError(f"grade_batch: {e}") from None
    if len(responses) != len(answers):
        raise ValueError(f"grade_batch: {len(responses)} responses but {len(answers)} answers")
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"grade_batch: num_workers must be >= 1 (or None), got {num_workers}")
    if not responses:
        res = BatchResult([], 0)
    else:
        bar = None
        if progress and len(responses) >= 256 and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=len(responses), desc="grading", unit="response", leave=False)
        try:
            res = get_pool(num_workers).grade(list(responses), list(answers), rules, progress=bar)
        finally:
            if bar is not None:
                bar.close()
    return (res.outcomes, res.timeouts) if return_timeouts else res.outcomes
