"""Answer grading for GRPO-LEAD: math-verify on the last ``\\boxed{}``, plus a degeneracy check.

Outcome codes: ``1`` correct, ``0`` wrong (or grading timed out), ``-1`` no parsable final answer,
``-2`` degenerate (no parsable answer *and* heavy repetition).

``grade_batch`` runs in a pool of worker processes, each item with a hard deadline: a response that makes
sympy spin inside C code (where ``signal.alarm`` cannot interrupt) gets its worker killed and is graded 0.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import re
import time
from multiprocessing.connection import wait as _wait_conns

CORRECT, WRONG, NO_ANSWER, DEGENERATE = 1, 0, -1, -2

_THINK_END = "</think>"
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# Repetition thresholds from DESIGN.md: an n-gram (n <= 30) repeated >= 10 times in a row, or a "word"
# (whitespace-free run) of >= 120 characters.
_MAX_NGRAM, _MIN_REPEATS, _LONG_WORD = 30, 10, 120


def _last_boxed(text: str) -> str | None:
    """The last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces, or None."""
    matches = list(_BOXED.finditer(text))
    for m in reversed(matches):  # the last one that closes; an unclosed trailing box is not an answer
        depth, i = 1, m.end()
        while i < len(text) and depth:
            c = text[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            i += 1
        if depth == 0:
            return text[m.start():i]
    return None


def is_degenerate_text(text: str) -> bool:
    """Heavy repetition: some word n-gram (n <= 30) repeated >= 10 times in a row, or a >= 120-char word."""
    words = text.split()
    if any(len(w) >= _LONG_WORD for w in words):
        return True
    ids: dict[str, int] = {}
    seq = [ids.setdefault(w, len(ids)) for w in words]
    L = len(seq)
    for n in range(1, _MAX_NGRAM + 1):
        need = (_MIN_REPEATS - 1) * n  # consecutive positions with seq[i] == seq[i + n]
        if L - n < need:
            break
        run = 0
        for i in range(L - n):
            if seq[i] == seq[i + n]:
                run += 1
                if run >= need:
                    return True
            else:
                run = 0
    return False


def _math_verify_timeouts(timeout_s: float) -> int | None:
    # math-verify's own timeouts use signal.alarm: whole seconds, main thread only.
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return max(1, int(round(timeout_s)))


def grade(response: str, answer: str, *, require_think: bool = False, timeout_s: float = 5.0) -> int:
    """Grade one response against the gold answer (in-process; see ``grade_batch`` for hard deadlines).

    The final answer is the last ``\\boxed{...}`` in the text after the last ``</think>``. With
    ``require_think=True`` a response without ``</think>`` has no final answer (``-1``).
    """
    from math_verify import LatexExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException

    if not isinstance(response, str) or not isinstance(answer, str):
        raise TypeError(f"grade() takes strings, got response={type(response).__name__}, "
                        f"answer={type(answer).__name__}")
    cut = response.rfind(_THINK_END)
    if cut < 0 and require_think:
        tail = None
    else:
        tail = response[cut + len(_THINK_END):] if cut >= 0 else response
    boxed = _last_boxed(tail) if tail is not None else None
    t = _math_verify_timeouts(timeout_s)
    pred = []
    if boxed is not None:
        try:
            pred = parse(boxed, extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
                         parsing_timeout=t, raise_on_error=True)
        except TimeoutException:
            return WRONG
        except Exception:
            pred = []
    if not pred:
        return DEGENERATE if is_degenerate_text(response) else NO_ANSWER
    gold_text = answer.strip()
    if not gold_text.startswith("$") and "\\boxed" not in gold_text:
        gold_text = f"${gold_text}$"
    try:
        gold = parse(gold_text, parsing_timeout=t, raise_on_error=True)
        ok = verify(gold, pred, timeout_seconds=t, raise_on_error=True)
    except Exception:  # includes TimeoutException: an answer we could not confirm is wrong
        return WRONG
    return CORRECT if ok else WRONG


# --------------------------------------------------------------------------------------------------
# Process pool with per-item deadlines.

_READY = "ready"


def _worker_main(conn) -> None:
    """Grade one item at a time: receives (index, response, answer, require_think, timeout_s)."""
    import logging
    import signal

    import math_verify  # noqa: F401  (import before saying ready: deadlines start after imports)

    # Ctrl-C reaches the whole process group; the trainer decides when to stop, not its graders.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    conn.send(_READY)
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        idx, resp, ans, require_think, timeout_s = msg
        try:
            out = grade(resp, ans, require_think=require_think, timeout_s=timeout_s)
        except Exception:
            out = WRONG
        conn.send((idx, out))


class _Worker:
    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.item: int | None = None  # index of the item being graded
        self.deadline = float("inf")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()


class GradingPool:
    """Worker processes that grade with a hard per-item deadline; reused across calls."""

    _START_TIMEOUT_S = 120.0  # a worker that cannot even import math-verify in this long is an error

    def __init__(self, num_workers: int):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        # forkserver: fast worker (re)starts without forking a parent that holds torch/NCCL threads;
        # the server imports math-verify once so each new worker starts warm.
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        self._ctx = mp.get_context(method)
        if method == "forkserver":
            self._ctx.set_forkserver_preload([__name__, "math_verify"])
        self.num_workers = num_workers
        self._workers = [_Worker(self._ctx) for _ in range(num_workers)]
        self.timeouts = 0  # items killed at their deadline, over the pool's life

    def close(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for w in self._workers:
            w.proc.join(timeout=1)
            if w.proc.is_alive():
                w.kill()
        self._workers = []

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers[self._workers.index(w)] = _Worker(self._ctx)

    def grade(self, responses, answers, *, timeout_s: float, require_think: bool) -> list[int]:
        n = len(responses)
        results: list[int] = [WRONG] * n
        todo = iter(range(n))
        pending = n
        started_wait = time.monotonic()

        def assign(w: _Worker) -> None:
            i = next(todo, None)
            w.item = i
            if i is not None:
                w.deadline = time.monotonic() + timeout_s
                w.conn.send((i, responses[i], answers[i], require_think, timeout_s))

        for w in self._workers:
            if w.ready:
                assign(w)
        while pending:
            live = [w for w in self._workers if not w.ready or w.item is not None]
            deadline = min((w.deadline for w in live if w.item is not None), default=time.monotonic() + 1.0)
            ready = _wait_conns([w.conn for w in live], timeout=max(0.0, deadline - time.monotonic()))
            for w in live:
                if w.conn in ready:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):  # the worker died (out of memory, say)
                        if w.item is not None:
                            results[w.item] = WRONG
                            pending -= 1
                        elif time.monotonic() - started_wait > self._START_TIMEOUT_S:
                            raise RuntimeError("grading workers keep dying at start-up; is math-verify "
                                               "installed (pip install 'math-verify[antlr4_13_2]')?")
                        self._replace(w)
                        continue
                    if msg == _READY:
                        w.ready = True
                    else:
                        idx, out = msg
                        results[idx] = out
                        pending -= 1
                    assign(w)
                elif w.item is not None and time.monotonic() >= w.deadline:
                    results[w.item] = WRONG  # a timeout counts as wrong
                    self.timeouts += 1
                    pending -= 1
                    self._replace(w)
        return results


_POOL: GradingPool | None = None


def _default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


def get_pool(num_workers: int | None = None) -> GradingPool:
    """The process-wide grading pool (created on first use, resized when asked for another size)."""
    global _POOL
    n = num_workers or _default_workers()
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
                num_workers: int | None = None, require_think: bool = False) -> list[int]:
    """Grade many responses in parallel worker processes; each item costs at most ``timeout_s``.

    An item that runs past its deadline has its worker killed and replaced, and is graded ``0``.
    """
    if len(responses) != len(answers):
        raise ValueError(f"grade_batch: {len(responses)} responses but {len(answers)} answers")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if not responses:
        return []
    return get_pool(num_workers).grade(list(responses), list(answers), timeout_s=timeout_s,
                                       require_think=require_think)
