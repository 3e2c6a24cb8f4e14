"""The task a run trains and evaluates on: the user's problems (``data.path``), or, without a path, the
generated sums. This is the one place that rule lives; data.py reads files and knows no generated task."""

from __future__ import annotations

import random
from dataclasses import dataclass

from lead_fast.config import DataConfig
from lead_fast.data import Problem, load_problems, split_eval
from lead_fast.errors import DataError

TASK_INSTRUCTION = "Put the final answer within \\boxed{}."
TASK_MAX = 20  # operands in [0, TASK_MAX)


def synthetic_problems(operands: tuple[int, int] = (0, TASK_MAX), limit: int = 2000) -> list[Problem]:
    """Every ``a + b`` problem with both operands in ``[lo, hi)``, in a fixed order (the default range
    gives the embedded task's 400); more than ``limit`` pairs: a fixed seeded sample of ``limit``."""
    lo, hi = operands
    pairs = [(a, b) for a in range(lo, hi) for b in range(lo, hi)]
    if len(pairs) > limit:
        pairs = sorted(random.Random(lo * 100_003 + hi).sample(pairs, limit))
    return [Problem(f"What is {a} + {b}?", str(a + b), {"problem": f"What is {a} + {b}?", "answer": str(a + b)})
            for a, b in pairs]


LEVELS = {"easy": 2, "medium": 3, "hard": 4}
"""The mixed task's levels: how many numbers a problem adds."""


def mixed_problems(per_level: int = 200) -> list[Problem]:
    """The generated task with a spread in difficulty: ``per_level`` sums of 2 numbers in [0, 20) (easy), of 3
    (medium) and of 4 (hard) numbers in [0, 10), a fixed seeded sample each, with a ``level`` column."""
    rng = random.Random(2_504_096)
    out = []
    for level, k in LEVELS.items():
        hi = TASK_MAX if k == 2 else 10
        seen: set[tuple[int, ...]] = set()
        while len(seen) < per_level:
            seen.add(tuple(rng.randrange(hi) for _ in range(k)))
        for ops in sorted(seen):
            text = "What is " + " + ".join(map(str, ops)) + "?"
            out.append(Problem(text, str(sum(ops)), {"problem": text, "answer": str(sum(ops)), "level": level}))
    return out


@dataclass(frozen=True)
class Task:
    """Training and eval problems, and the instruction appended to each."""

    train: list[Problem]
    eval: list[Problem]
    instruction: str


def instruction_for(data: DataConfig) -> str:
    """The instruction a run with this data section puts after every problem."""
    return TASK_INSTRUCTION if data.path is None else data.instruction


def load_task(data: DataConfig, seed: int, *, need_answers: bool = True) -> Task:
    """The problems of ``data``; eval problems from ``eval_path``, or ``eval_size`` held out (by ``seed``).
    ``need_answers``: every row must have a gold answer (the math reward or the eval grades against it)."""
    if data.path is None and data.task == "mixed":     # the same share of each level held out
        if data.eval_size < len(LEVELS):
            raise DataError(f"data.eval_size={data.eval_size}: the mixed task holds out the same number of problems "
                            f"of each of its {len(LEVELS)} levels, so it needs at least {len(LEVELS)}")
        parts = [split_eval([p for p in mixed_problems() if p.columns["level"] == level],
                            data.eval_size // len(LEVELS) + (i < data.eval_size % len(LEVELS)), seed)
                 for i, level in enumerate(LEVELS)]
        return Task([p for tr, _ in parts for p in tr], [p for _, ev in parts for p in ev], instruction_for(data))
    if data.path is None:
        train, ev = split_eval(synthetic_problems(tuple(data.operands)), data.eval_size, seed)
        return Task(train, ev, instruction_for(data))
    fields = dict(split=data.split, subset=data.subset, prompt_field=data.prompt_field, need_answers=need_answers)
    train = load_problems(data.path, data.problem_field, data.answer_field, **fields)
    if data.eval_path:
        ev = load_problems(data.eval_path, data.problem_field, data.answer_field, **fields)[: data.eval_size]
    else:
        train, ev = split_eval(train, data.eval_size, seed)
    return Task(train, ev, instruction_for(data))
