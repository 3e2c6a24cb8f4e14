"""The task a run trains and evaluates on: the user's problems (``data.path``), or, without a path, the
generated sums of the demo. This is the one place that rule lives; data.py reads files and knows no demo."""

from __future__ import annotations

from dataclasses import dataclass

from lead_fast.config import DataConfig
from lead_fast.data import Problem, load_problems, split_eval
from lead_fast.demo import TASK_INSTRUCTION, synthetic_problems


@dataclass(frozen=True)
class Task:
    """Training and eval problems, and the instruction appended to each."""

    train: list[Problem]
    eval: list[Problem]
    instruction: str


def instruction_for(data: DataConfig) -> str:
    """The instruction a run with this data section puts after every problem."""
    return TASK_INSTRUCTION if data.path is None else data.instruction


def load_task(data: DataConfig, seed: int) -> Task:
    """The problems of ``data``; eval problems from ``eval_path``, or ``eval_size`` held out (by ``seed``)."""
    if data.path is None:
        train, ev = split_eval(synthetic_problems(tuple(data.operands)), data.eval_size, seed)
        return Task(train, ev, instruction_for(data))
    train = load_problems(data.path, data.problem_field, data.answer_field, split=data.split, subset=data.subset)
    if data.eval_path:
        ev = load_problems(data.eval_path, data.problem_field, data.answer_field, split=data.split,
                           subset=data.subset)[: data.eval_size]
    else:
        train, ev = split_eval(train, data.eval_size, seed)
    return Task(train, ev, instruction_for(data))
