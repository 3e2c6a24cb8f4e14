"""Problems in, prompts out: file loading (json / jsonl / parquet via ``datasets``), prompt templates,
and the embedded synthetic task that the default run trains on.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass


class DataError(ValueError):
    """Bad training data; the message names the file and, where it can, the row."""


@dataclass
class Problem:
    problem: str
    answer: str


def load_problems(path: str, problem_field: str = "problem", answer_field: str = "answer") -> list[Problem]:
    """Read problems from a .json (a list of objects), .jsonl or .parquet file, checking every row."""
    if not os.path.exists(path):
        raise DataError(f"data file {path} does not exist")
    if os.path.isdir(path):
        raise DataError(f"data path {path} is a directory; give a .json, .jsonl or .parquet file")
    ext = os.path.splitext(path)[1].lower()
    if os.path.getsize(path) == 0:
        raise DataError(f"data file {path} is empty")
    try:
        if ext == ".jsonl":
            rows = []
            with open(path, encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise DataError(f"{path}: line {i} is not valid JSON ({e.msg})") from None
        elif ext == ".json":
            with open(path, encoding="utf-8") as f:
                try:
                    rows = json.load(f)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
            if isinstance(rows, dict):  # {"data": [...]}, as some releases ship
                lists = [v for v in rows.values() if isinstance(v, list)]
                if len(lists) != 1:
                    raise DataError(f"{path}: expected a JSON list of problems, got an object")
                rows = lists[0]
            if not isinstance(rows, list):
                raise DataError(f"{path}: expected a JSON list of problems, got {type(rows).__name__}")
        elif ext == ".parquet":
            import datasets

            rows = list(datasets.load_dataset("parquet", data_files=path, split="train"))
        else:
            raise DataError(f"data file {path}: unknown extension {ext!r}; use .json, .jsonl or .parquet")
    except UnicodeDecodeError:
        raise DataError(f"data file {path} is not UTF-8 text") from None
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e}") from None
    if not rows:
        raise DataError(f"data file {path} holds no problems")
    out = []
    for i, row in enumerate(rows):
        rowno = i + 1
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {rowno} is a {type(row).__name__}, not an object with fields")
        for fld in (problem_field, answer_field):
            if fld not in row or row[fld] is None or str(row[fld]).strip() == "":
                have = ", ".join(sorted(map(str, row))) or "none"
                raise DataError(f"{path}: row {rowno} has no {fld!r} field (fields: {have}); set "
                                f"--data.{'problem' if fld == problem_field else 'answer'}_field if it has another name")
        out.append(Problem(str(row[problem_field]), str(row[answer_field])))
    return out


def build_prompt(tokenizer, problem: str, instruction: str, template: str = "auto") -> list[int]:
    """Token ids of the prompt: the chat template when the tokenizer has one (or ``template='chat'``)."""
    text = f"{problem} {instruction}".strip()
    use_chat = template == "chat" or (template == "auto" and getattr(tokenizer, "chat_template", None))
    if use_chat:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError("data.template is 'chat' but the tokenizer has no chat template")
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
    return tokenizer(text + "\n", add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------------------------------
# The embedded task: sums of two numbers, with worked solutions of varying length for a warm start.

TASK_INSTRUCTION = "Put the final answer within \\boxed{}."
TASK_MAX = 20  # operands in [0, TASK_MAX)


def synthetic_problems() -> list[Problem]:
    """All ``a + b`` problems with ``0 <= a, b < 20`` (400), in a fixed order."""
    return [Problem(f"What is {a} + {b}?", str(a + b)) for a in range(TASK_MAX) for b in range(TASK_MAX)]


def synthetic_solution(a: int, b: int, rng: random.Random) -> str:
    """One worked solution, drawn from a deliberately mixed distribution.

    Half are concise (just the boxed answer) and half verbose (restate, compute, check 1-3 times); half
    carry an arithmetic slip (the sum is off by 1 or 10). The warm-started policy therefore answers right
    about half the time and spends many tokens doing it: GRPO-LEAD has both accuracy and length to win.
    """
    s = a + b
    if rng.random() < 0.5:
        s = max(0, s + rng.choice([-10, -1, 1, 10]))
    if rng.random() < 0.5:
        return f"\\boxed{{{s}}}"
    checks = " ".join(f"Check: {s} - {b} = {s - b}." for _ in range(rng.randint(1, 3)))
    return f"We add {a} and {b}. {a} + {b} = {s}. {checks} So the answer is \\boxed{{{s}}}"


def synthetic_corpus(n: int, seed: int) -> list[tuple[Problem, str]]:
    rng = random.Random(seed)
    probs = synthetic_problems()
    out = []
    for _ in range(n):
        p = rng.choice(probs)
        a, b = (int(x) for x in p.problem[len("What is "):-1].split(" + "))
        out.append((p, synthetic_solution(a, b, rng)))
    return out


def split_eval(problems: list[Problem], eval_size: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """Hold out ``eval_size`` problems (a seeded choice) from training."""
    if eval_size >= len(problems):
        raise DataError(f"data.eval_size={eval_size} leaves no training problems out of {len(problems)}")
    idx = list(range(len(problems)))
    random.Random(seed + 7919).shuffle(idx)
    ev = set(idx[:eval_size])
    return [p for i, p in enumerate(problems) if i not in ev], [problems[i] for i in sorted(ev)]
