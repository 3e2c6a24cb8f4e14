"""Problems in, prompts out: file loading (json / jsonl / parquet via ``datasets``), the eval split,
prompt templates and tokenization, and which prompts each rank takes at each step.

Two row formats: a math problem (``problem`` and ``answer`` fields; the instruction is appended and
``data.template`` renders it) or TRL's (a ``prompt`` field holding text, used as it is, or a list of chat
messages, rendered by the chat template). Every other field of a row travels with it to the reward functions.
"""

from __future__ import annotations

import functools
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from lead_fast.errors import DataError

SHIPPED_DATA = Path(__file__).resolve().parents[1] / "data" / "grpo_lead"
"""The GRPO-LEAD data shipped with the repository (Apache-2.0; see its README)."""


@dataclass
class Problem:
    problem: str | list[dict]
    """A math problem's text, or a TRL prompt (``trl``): text, or chat messages (``{role, content}`` dicts)."""
    answer: str | None
    """The gold answer that math-verify grades against (None: the row has none; only the user's reward
    functions can score it)."""
    columns: dict = field(default_factory=dict)
    """The row's other fields, passed by name to the reward functions (TRL's rule)."""
    trl: bool = False
    """A TRL prompt: rendered as TRL renders it (text as is, messages by the chat template), no instruction."""


class Prompt(NamedTuple):
    """One tokenized training or eval prompt."""

    ids: list[int]
    answer: str | None
    problem: Problem
    shown: str | list[dict]
    """What reward functions get as its prompt: TRL's prompt as given; a math problem with its instruction,
    as one user message when the chat template rendered it (as TRL would see it), else as text."""


def _load_dataset_rows(path: str, split: str, subset: str | None) -> list:
    """Rows through ``datasets``: a ``save_to_disk`` directory, a local dataset directory (data files or a
    script), or a hub name ``org/name``."""
    import datasets

    try:
        saved = any(os.path.exists(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json"))
        if os.path.isdir(path) and saved:
            ds = datasets.load_from_disk(path)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{path} has no split {split!r} (it has {', '.join(ds)}); set --data.split")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(path, subset, split=split)
    except DataError:
        raise
    except (ValueError, KeyError) as e:  # an unknown split or subset, no data files
        raise DataError(f"cannot load {path} with datasets (split {split!r}, subset {subset!r}): {e}") from None
    except Exception as e:  # noqa: BLE001  (hub and network errors come in many classes)
        if os.path.exists(path):
            raise DataError(f"cannot load the dataset directory {path}: {type(e).__name__}: {e}") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"data {path!r} is not a local file or directory, and loading it as a Hugging Face hub "
                        f"dataset failed ({type(e).__name__}: {first}). "
                        "Without network access, download it elsewhere and pass the directory "
                        "(datasets.save_to_disk) or a .json/.jsonl/.parquet file") from None
    return list(ds)


def load_problems(path: str, problem_field: str = "problem", answer_field: str = "answer", *, split: str = "train",
                  subset: str | None = None, prompt_field: str = "prompt", need_answers: bool = True) -> list[Problem]:
    """Read problems, checking every row: a .json (a list of objects), .jsonl or .parquet file; or, through
    ``datasets``, a directory written by ``save_to_disk``, a local dataset directory, or a hub name. A row is
    a math problem (``problem_field``) or TRL's (``prompt_field``: text or chat messages); ``need_answers``:
    every row must have ``answer_field`` (math-verify grades against it)."""
    fields = dict(problem_field=problem_field, answer_field=answer_field, prompt_field=prompt_field,
                  need_answers=need_answers)
    if os.path.isdir(path) or (not os.path.exists(path) and _looks_like_hub_name(path)):
        return _check_rows(_load_dataset_rows(path, split, subset), path, **fields)
    if not os.path.exists(path):
        raise DataError(f"data file {path} does not exist")
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
    return _check_rows(rows, path, **fields)


def _looks_like_hub_name(path: str) -> bool:
    """``org/name``: two parts, no file extension, not a relative or home path."""
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "~")) and not os.path.splitext(path)[1]


def _check_rows(rows: list, path: str, *, problem_field: str, answer_field: str, prompt_field: str,
                need_answers: bool) -> list[Problem]:
    if not rows:
        raise DataError(f"data file {path} holds no problems")
    out = []
    for i, row in enumerate(rows):
        rowno = i + 1
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {rowno} is a {type(row).__name__}, not an object with fields")
        have = ", ".join(sorted(map(str, row))) or "none"
        if _present(row, problem_field):
            problem, trl = str(row[problem_field]), False
        elif _present(row, prompt_field):
            problem, trl = _trl_prompt(row[prompt_field], f"{path}: row {rowno}'s {prompt_field!r}"), True
        else:
            raise DataError(f"{path}: row {rowno} has neither a {problem_field!r} field (a math problem) nor a "
                            f"{prompt_field!r} field (TRL's prompt: text or chat messages); its fields: {have}. Set "
                            "--data.problem_field or --data.prompt_field if it has another name")
        if need_answers and not _present(row, answer_field):
            raise DataError(f"{path}: row {rowno} has no {answer_field!r} field (fields: {have}); set "
                            f"--data.answer_field if it has another name (math-verify grades against it, in the "
                            "math reward and the eval; without answers, score with your own reward functions, "
                            "--algo.reward_funcs, and --run.eval_every 0)")
        answer = str(row[answer_field]) if _present(row, answer_field) else None
        columns = {k: v for k, v in row.items() if not (trl and k == prompt_field)}
        out.append(Problem(problem, answer, columns, trl))
    return out


def _present(row: dict, name: str) -> bool:
    v = row.get(name)
    return v is not None and not (isinstance(v, str) and v.strip() == "") and not (isinstance(v, list) and not v)


def _trl_prompt(value, where: str) -> str | list[dict]:
    """TRL's prompt: text, or a list of ``{role, content}`` messages with text content."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                       and isinstance(m.get("content"), str) for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(f"{where} is neither text nor a list of chat messages ({{\"role\": ..., \"content\": "
                    f"text}} each): {str(value)[:120]}")


def build_prompt(tokenizer, problem: str | list[dict], instruction: str, template: str = "auto", *,
                 trl: bool = False) -> list[int]:
    """Token ids of the prompt. A math problem: the problem and ``instruction`` through the chat template when
    the tokenizer has one (or ``template='chat'``), else as text. A TRL prompt (``trl``): text as it is,
    chat messages through the chat template, as TRL renders them."""
    if trl and isinstance(problem, str):
        return tokenizer(problem, add_special_tokens=False)["input_ids"]
    if trl:
        return _chat_ids(tokenizer, problem)
    text = f"{problem} {instruction}".strip()
    if _uses_chat(tokenizer, template):
        return _chat_ids(tokenizer, [{"role": "user", "content": text}])
    return tokenizer(text + "\n", add_special_tokens=False)["input_ids"]


def _uses_chat(tokenizer, template: str) -> bool:
    return template == "chat" or (template == "auto" and bool(getattr(tokenizer, "chat_template", None)))


def _chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the prompts are chat messages (or data.template is 'chat') but the tokenizer has no chat "
                        "template")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def shown_prompt(p: Problem, tokenizer, instruction: str, template: str) -> str | list[dict]:
    """What reward functions get as ``p``'s prompt (``Prompt.shown``)."""
    if p.trl:
        return p.problem
    text = f"{p.problem} {instruction}".strip()
    return [{"role": "user", "content": text}] if _uses_chat(tokenizer, template) else text


def split_eval(problems: list[Problem], eval_size: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """Hold out ``eval_size`` problems (a seeded choice) from training."""
    if not 1 <= eval_size < len(problems):
        raise DataError(f"data.eval_size={eval_size} must be at least 1 and smaller than the number of problems "
                        f"({len(problems)}): the rest are for training")
    idx = list(range(len(problems)))
    random.Random(seed + 7919).shuffle(idx)
    ev = set(idx[:eval_size])
    return [p for i, p in enumerate(problems) if i not in ev], [problems[i] for i in sorted(ev)]


def tokenize_prompts(problems: list[Problem], tokenizer, *, instruction: str, template: str, max_tokens: int,
                     what: str, preset: str | None = None, log=print) -> list[Prompt]:
    """One ``Prompt`` per problem; prompts over ``max_tokens`` are skipped and counted (``preset``: the
    preset in force, named in the refusal since it may have set the limit)."""
    out, skipped = [], 0
    lengths = []
    for p in problems:
        ids = build_prompt(tokenizer, p.problem, instruction, template, trl=p.trl)
        lengths.append(len(ids))
        if len(ids) > max_tokens:
            skipped += 1
            continue
        out.append(Prompt(ids, p.answer, p, shown_prompt(p, tokenizer, instruction, template)))
    if not out:
        source = ("" if not preset else " (the default unless you set it)" if preset == "defaults" else
                  f" (the {preset} preset's value unless you set it)")
        raise DataError(f"every one of the {len(problems)} {what} prompts is longer than "
                        f"data.max_prompt_tokens={max_tokens} tokens{source}; the longest has {max(lengths)}: raise "
                        f"the limit with --data.max_prompt_tokens {max(lengths)}")
    if skipped:
        log(f"WARNING: skipped {skipped} of {len(problems)} {what} prompts longer than "
            f"data.max_prompt_tokens={max_tokens}")
    return out


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    perm = list(range(n))
    random.Random(seed * 7_919 + epoch).shuffle(perm)
    return tuple(perm)


def prompts_for_step(n_train: int, step: int, per_step: int, rank: int, world: int, seed: int) -> list[int]:
    """Indices of this rank's prompts at ``step``: one global stream of seeded per-epoch permutations,
    ``per_step`` prompts a step, rank ``r`` taking the ``r``-th contiguous share."""
    per_rank = per_step // world
    start = step * per_step + rank * per_rank
    return [_epoch_order(n_train, seed, k // n_train)[k % n_train] for k in range(start, start + per_rank)]
