"""Answer grading for GRPO-LEAD: math-verify on the last ``\\boxed{}``, plus a degeneracy check.

Outcome codes: ``1`` correct, ``0`` wrong (or grading timed out), ``-1`` no parsable final answer,
``-2`` degenerate (no parsable answer *and* heavy repetition).

``grade`` runs in the calling process; ``grade_batch`` (``lead_fast.algo.grading_pool``) runs it in worker
processes with a hard deadline per item.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lead_fast.choices import AnswerFrom, options

CORRECT, WRONG, NO_ANSWER, DEGENERATE = 1, 0, -1, -2

_THINK_END = "</think>"
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")
# An AMC-style choice label inside a box, with the spacing around it: "\textbf{(D)}\; 192", "(D) 31",
# "\mathrm{(A)}\ 0", "8\ \textbf{(C)}".
_SPACE = r"(?:\s|~|\\[ ,;:!]|\\q?quad\b)*"
_LABEL = re.compile(_SPACE + r"\\(?:textbf|text|mathrm|mathbf)\s*\{\s*\(?\s*[A-E]\s*\)?\s*\}" + _SPACE)
# a bare "(D)" only at either end of the box: inside, "P(A)" is mathematics
_EDGE_LABEL = re.compile(r"^\s*\(\s*[A-E]\s*\)" + _SPACE + r"|" + _SPACE + r"\(\s*[A-E]\s*\)\s*$")
_LETTER = re.compile(r"^\s*(?:\\(?:textbf|text|mathrm|mathbf)\s*\{)?\s*\(?\s*[A-E]\s*\)?\s*\}?\s*$")


def strip_choice_label(boxed: str, gold: str) -> str:
    """``\\boxed{\\textbf{(D)} 192}`` -> ``\\boxed{192}`` when the gold answer is not itself a choice letter;
    a box holding only a label is left as it is (and graded against the gold answer as written)."""
    if _LETTER.match(gold.strip().strip("$")):
        return boxed
    inner = boxed[boxed.index("{") + 1:-1]
    stripped = _EDGE_LABEL.sub(" ", _LABEL.sub(" ", inner)).strip()
    return boxed if not stripped or stripped == inner.strip() else boxed[: boxed.index("{") + 1] + stripped + "}"
# Repetition thresholds as docs/design.md defines them: an n-gram (n <= 30) repeated >= 10 times in a row, or a "word"
# (whitespace-free run) of >= 120 characters.
_MAX_NGRAM, _MIN_REPEATS, _LONG_WORD = 30, 10, 120


def _last_boxed(text: str) -> str | None:
    """The last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces, or None.

    One pass over the braces with a stack (linear in the text: a megabyte of unclosed boxes takes
    milliseconds); an unclosed trailing box is not an answer, so the last box that closes wins.
    """
    opens = {m.end() - 1: m.start() for m in _BOXED.finditer(text)}   # box's "{" -> start of "\\boxed"
    if not opens:
        return None
    stack: list[int] = []
    last_start = last_end = -1
    for m in _BRACE.finditer(text):
        i = m.start()
        if text[i] == "{":
            stack.append(i)
        elif stack:
            o = stack.pop()
            start = opens.get(o)
            if start is not None and start > last_start:
                last_start, last_end = start, i + 1
    return text[last_start:last_end] if last_start >= 0 else None


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


ANSWER_FROM = options(AnswerFrom)


def answer_span(response: str, *, answer_from: str = "after_think", require_think: bool = False) -> str | None:
    """The text that may hold the final answer, or None when the response has none.

    ``after_think``: after the last ``</think>`` (the whole response when there is none, unless
    ``require_think``). ``before_think`` (GRPO-LEAD's official rule, with rollouts that stop at
    ``</think>``): before the first ``</think>``; a response without one was cut off and has no answer.
    """
    if answer_from == "before_think":
        cut = response.find(_THINK_END)
        return None if cut < 0 else response[:cut]
    if answer_from != "after_think":
        raise ValueError(f"answer_from must be one of {', '.join(ANSWER_FROM)}, got {answer_from!r}")
    cut = response.rfind(_THINK_END)
    if cut < 0:
        return None if require_think else response
    return response[cut + len(_THINK_END):]


def extract_answer(response: str, *, answer_from: str = "after_think", require_think: bool = False) -> str | None:
    """The content of the final ``\\boxed{...}`` (as ``grade`` finds it), or None."""
    tail = answer_span(response, answer_from=answer_from, require_think=require_think)
    boxed = _last_boxed(tail) if tail is not None else None
    if boxed is None:
        return None
    return boxed[boxed.index("{") + 1:-1].strip()


def answers_equal(a: str, b: str, *, timeout_s: float = 5.0) -> bool:
    """Whether math-verify finds two extracted answers equal (``1/2``, ``0.5``, ``\\frac{1}{2}``); False
    on any error or timeout."""
    from math_verify import parse, verify

    if a == b:
        return True
    t = _math_verify_timeouts(timeout_s)
    try:
        return bool(verify(parse(f"${a}$", parsing_timeout=t), parse(f"${b}$", parsing_timeout=t),
                           timeout_seconds=t))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:
        return False


def grade(response: str, answer: str, *, require_think: bool = False, timeout_s: float = 5.0,
          answer_from: str = "after_think", unboxed_is_wrong: bool = False) -> int:
    """Grade one response against the gold answer (in-process; see ``grade_batch`` for hard deadlines).

    The final answer is the last ``\\boxed{...}`` in ``answer_span`` (by default the text after the last
    ``</think>``; with ``require_think=True`` a response without ``</think>`` has no answer, ``-1``).
    With ``unboxed_is_wrong`` (the official rule) a finished response (``</think>`` present) without a
    parsable box is wrong (``0``), not a format error. Never raises on hostile text: math-verify's own
    timeout (a ``BaseException``) and any parse or compare error grade it ``0`` (no parsable box: ``-1`` /
    ``-2``). Only ``KeyboardInterrupt`` and ``SystemExit`` pass through.
    """
    from math_verify import LatexExtractionConfig, parse, verify

    if not isinstance(response, str) or not isinstance(answer, str):
        raise TypeError(f"grade() takes strings, got response={type(response).__name__}, "
                        f"answer={type(answer).__name__}")
    tail = answer_span(response, answer_from=answer_from, require_think=require_think)
    boxed = _last_boxed(tail) if tail is not None else None
    if boxed is not None:
        boxed = strip_choice_label(boxed, answer)
    t = _math_verify_timeouts(timeout_s)
    pred = []
    if boxed is not None:
        try:
            pred = parse(boxed, extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
                         parsing_timeout=t, raise_on_error=True)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # math-verify's TimeoutException derives from BaseException
            if _is_timeout(e):
                return WRONG
            pred = []
    if not pred:
        if unboxed_is_wrong and _THINK_END in response:
            return WRONG
        return DEGENERATE if is_degenerate_text(response) else NO_ANSWER
    gold_text = answer.strip()
    if not gold_text.startswith("$") and "\\boxed" not in gold_text:
        gold_text = f"${gold_text}$"
    try:
        gold = parse(gold_text, parsing_timeout=t, raise_on_error=True)
        ok = verify(gold, pred, timeout_seconds=t, raise_on_error=True)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # a timeout or an error: an answer we could not confirm is wrong
        return WRONG
    return CORRECT if ok else WRONG


def _is_timeout(e: BaseException) -> bool:
    from math_verify.errors import TimeoutException

    return isinstance(e, TimeoutException)


@dataclass(frozen=True)
class GradingRules:
    """How every response is graded, the same in training, the trainer's eval and the eval command: where
    the final answer is read (``answer_from``, ``require_think``), whether a finished response without a box
    is wrong (``unboxed_is_wrong``), and the per-response deadline (``timeout_s``). See ``grade``."""

    require_think: bool = False
    answer_from: AnswerFrom = "after_think"
    unboxed_is_wrong: bool = False
    timeout_s: float = 5.0

    def __post_init__(self):
        if self.answer_from not in ANSWER_FROM:
            raise ValueError(f"answer_from must be one of {', '.join(ANSWER_FROM)}, got {self.answer_from!r}")
        if not (isinstance(self.timeout_s, (int, float)) and math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"timeout_s must be a finite number > 0, got {self.timeout_s!r}")

    def grade(self, response: str, answer: str) -> int:
        """``grade`` under these rules."""
        return grade(response, answer, require_think=self.require_think, timeout_s=self.timeout_s,
                     answer_from=self.answer_from, unboxed_is_wrong=self.unboxed_is_wrong)

    def answer(self, response: str) -> str | None:
        """The final answer these rules read from ``response`` (``extract_answer``), or None."""
        return extract_answer(response, answer_from=self.answer_from, require_think=self.require_think)
