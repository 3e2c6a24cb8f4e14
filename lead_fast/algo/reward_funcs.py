"""Reward functions with TRL's signature: ``fn(prompts, completions, **columns) -> list[float | None]``.

``prompts`` and ``completions`` are one entry per completion: text, or chat messages when the prompt was
chat messages (a completion is then ``[{"role": "assistant", "content": text}]``), as TRL passes them. The
keyword arguments are the dataset row's other fields (lists, one entry per completion), ``completion_ids``
(token ids) and ``trainer_state`` (``global_step``, ``max_steps``). A function returns one value per
completion: a number, or None for "no reward" (TRL's meaning: a completion every function left at None is
unscorable, out of its group's mean and std, with advantage 0).

Functions are named ``module:function`` (an importable module) or ``path/to/file.py:function``. ``math`` is
the built-in: math-verify grading of the last ``\\boxed{}`` against the row's gold answer, in grading worker
processes with a deadline per response (``grading_pool``), rewarded by outcome (``algo.correct_reward``...).
The user's functions run in one worker process per rank, imported once, each call under a deadline: a
function that raises, hangs, returns the wrong count or a non-number stops the run with one paragraph that
names it, the step and the first bad row (``RewardFunctionError``).

The combined reward is TRL's: the weighted sum over functions, None counted as 0, unless every function
gave None (then None).
"""

from __future__ import annotations

import math
import numbers
import os
import subprocess
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection

from lead_fast.algo.grading import CORRECT, DEGENERATE, NO_ANSWER, WRONG, GradingRules
from lead_fast.algo.grading_pool import WorkerProcess, grade_batch, serve
from lead_fast.errors import ConfigError, RewardFunctionError

MATH = "math"
"""The built-in reward function's name: math-verify grading."""

_READY = "ready"


class NotLoadable(ValueError):
    """``load_function``'s own refusal (the spec is malformed, or names no function)."""


def load_function(spec: str):
    """The function ``spec`` names: ``module:function`` or ``path/to/file.py:function``. Raises
    ``NotLoadable`` with a message that says what is wrong (and whatever importing the module raises)."""
    import importlib
    import importlib.util

    module_name, sep, name = spec.rpartition(":")
    if not sep or not module_name or not name:
        raise NotLoadable(f"{spec!r} is not 'module:function' or 'path/to/file.py:function'")
    if module_name.endswith(".py"):
        path = os.path.abspath(module_name)
        if not os.path.isfile(path):
            raise NotLoadable(f"{module_name} is not a file")
        mod_spec = importlib.util.spec_from_file_location(f"lead_fast_rewards_{abs(hash(path))}", path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[mod_spec.name] = module        # pickling, dataclasses and typing look modules up by name
        mod_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    fn = getattr(module, name, None)
    if fn is None:
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        raise NotLoadable(f"{module_name} has no {name!r} (its functions: {', '.join(found) or 'none'})")
    if not callable(fn):
        raise NotLoadable(f"{module_name}.{name} is a {type(fn).__name__}, not a function")
    return fn


def _checked(values, n: int) -> tuple[list[float | None] | None, str | None]:
    """``(values as floats / None, None)``, or ``(None, what is wrong)``: the count, or the first bad row."""
    try:
        values = list(values)
    except TypeError:
        return None, f"it returned a {type(values).__name__}, not a list"
    if len(values) != n:
        return None, f"it returned {len(values)} values for {n} completions (one per completion, or None)"
    out = []
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(None)
        elif isinstance(v, numbers.Real) and math.isfinite(float(v)):
            out.append(float(v))
        elif hasattr(v, "item") and getattr(v, "ndim", 1) == 0 and isinstance(v.item(), numbers.Real):
            out.append(float(v.item()))       # a 0-d tensor or array
        else:
            return i, f"row {i + 1} is {v!r} (a {type(v).__name__}), not a finite number or None"
    return out, None


def worker_main(read_fd: int, write_fd: int) -> None:
    """The reward worker's loop: first ``(specs, sys.path entry)``, answered ``ready`` or ``("error", text)``;
    then ``(function index, kwargs)``, answered ``("ok", values)`` or ``("bad", row or None, text)``."""
    import signal
    import traceback

    conn_in, conn_out = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the trainer decides when to stop
    specs, cwd = conn_in.recv()
    sys.path.insert(0, cwd)
    funcs = []
    for spec in specs:
        try:
            funcs.append(load_function(spec))
        except BaseException as e:  # noqa: BLE001  (an import runs the user's code: anything can happen)
            if isinstance(e, ModuleNotFoundError):
                text = (f"{type(e).__name__}: {e} (modules are imported from {cwd} and the installed packages; "
                        "or give the file: path/to/file.py:function)")
            elif isinstance(e, NotLoadable):
                text = str(e)
            else:
                frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<frozen")]
                text = f"{type(e).__name__}: {e} ({frames[-1].filename} line {frames[-1].lineno})"
            conn_out.send(("error", spec, text))
            return
    conn_out.send(_READY)

    def call(msg):
        i, kwargs = msg
        try:
            values = funcs[i](**kwargs)
        except BaseException as e:  # noqa: BLE001
            tb = traceback.extract_tb(e.__traceback__)[-1]
            conn_out.send(("bad", None, f"it raised {type(e).__name__}: {e} ({os.path.basename(tb.filename)} line "
                                        f"{tb.lineno}, in {tb.name})"))
            return
        got, problem = _checked(values, len(kwargs["completions"]))     # got: the values, or the bad row
        conn_out.send(("ok", got) if problem is None else ("bad", got, problem))

    serve(conn_in, call)


class _Worker(WorkerProcess):
    """The user's functions, imported in a process of their own."""

    START_TIMEOUT_S = 300.0

    def __init__(self, specs: list[str]):
        super().__init__("lead_fast.algo.reward_funcs:worker_main")
        self.send_conn.send((specs, os.getcwd()))
        if not self.conn.poll(self.START_TIMEOUT_S):
            self.kill()
            raise ConfigError(f"the reward functions ({', '.join(specs)}) took over {self.START_TIMEOUT_S:.0f} s to "
                              "import")
        try:
            msg = self.conn.recv()
        except EOFError:
            code = self.proc.wait()
            raise ConfigError(f"the reward functions' process exited while importing them (exit code {code}): "
                              f"{', '.join(specs)}") from None
        if msg != _READY:
            self.kill()
            _, spec, text = msg
            raise ConfigError(f"reward function {spec!r} (algo.reward_funcs) cannot be loaded: {text}")

    def call(self, i: int, kwargs: dict, timeout_s: float) -> tuple:
        """The worker's answer, or ``("bad", None, why)`` when it hangs (killed) or dies."""
        self.send_conn.send((i, kwargs))
        if not self.conn.poll(timeout_s):
            self.kill()
            return "bad", None, (f"it did not return within algo.reward_timeout_s={timeout_s:g} s (its process was "
                                 "killed)")
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            code = self.proc.wait()
            return "bad", None, f"its process died (exit code {code}; a negative code is the signal that killed it)"

    def close(self) -> None:
        try:
            self.send_conn.send(None)
            self.proc.wait(timeout=5)
        except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


def outcome_values(outcomes: list[int], outcome_rewards: tuple[float, float, float, float]) -> list[float]:
    """The math reward of each outcome code: ``outcome_rewards`` is (correct, wrong, unanswered, degenerate)."""
    value = dict(zip((CORRECT, WRONG, NO_ANSWER, DEGENERATE), outcome_rewards))
    return [value[o] for o in outcomes]


@dataclass
class Scores:
    """One batch of completions, scored: ``per_func`` is ``(R, F)`` float64 with NaN for None, ``total`` the
    combined ``(R,)`` reward (NaN: unscorable), ``outcomes`` math-verify's codes when ``math`` is among the
    functions, else ``CORRECT`` where the total is > 0 and ``WRONG`` elsewhere."""

    per_func: "object"
    total: "object"
    outcomes: list[int]
    grade_timeouts: int


@dataclass(frozen=True)
class RewardSettings:
    """Which reward functions, their weights and deadlines, and the math reward's values: built once from
    the config (``from_config``)."""

    funcs: tuple[str, ...] = (MATH,)
    weights: tuple[float, ...] = (1.0,)
    timeout_s: float = 120.0
    rules: GradingRules = GradingRules()
    outcome_rewards: tuple[float, float, float, float] = (1.0, -1.0, 0.0, -2.0)
    """The math reward of a correct, wrong, unanswered and degenerate response."""

    @staticmethod
    def from_config(algo) -> "RewardSettings":
        weights = tuple(algo.reward_weights) if algo.reward_weights else (1.0,) * len(algo.reward_funcs)
        return RewardSettings(tuple(algo.reward_funcs), weights, algo.reward_timeout_s, GradingRules(
            require_think=algo.require_think, answer_from=algo.answer_from, unboxed_is_wrong=algo.unboxed_is_wrong,
            timeout_s=algo.grade_timeout_s), (algo.correct_reward, algo.incorrect_reward, algo.format_error_reward,
                                              algo.degenerate_reward))


class RewardFunctions:
    """The run's reward functions, built once per rollout rank (the user's imported in their worker here,
    so an unimportable one stops the run before its first step)."""

    def __init__(self, settings: RewardSettings, *, grade_workers: int | None = None):
        self.settings = settings
        self.grade_workers = grade_workers
        self.user = [f for f in settings.funcs if f != MATH]
        self._worker = _Worker(self.user) if self.user else None

    @property
    def names(self) -> tuple[str, ...]:
        return self.settings.funcs

    def math(self, completions: list[str], answers: list[str | None], progress: bool = False) -> tuple[list, list, int]:
        """The built-in: ``(rewards, outcomes, timeouts)``."""
        if any(a is None for a in answers):
            raise RewardFunctionError("the math reward needs every prompt's gold answer (data.answer_field)")
        outcomes, timeouts = grade_batch(completions, answers, rules=self.settings.rules,
                                         num_workers=self.grade_workers, return_timeouts=True, progress=progress)
        return outcome_values(outcomes, self.settings.outcome_rewards), outcomes, timeouts

    def score(self, prompts: list, texts: list[str], completion_ids: list[list[int]], columns: list[dict],
              answers: list[str | None], *, step: int, max_steps: int, progress: bool = False) -> Scores:
        """Score ``R`` completions: ``prompts[i]`` (text or chat messages) was answered by ``texts[i]``;
        ``columns[i]`` is its row's fields. Raises ``RewardFunctionError`` naming the function, the step
        (``step`` counts from 0) and the first bad row."""
        import torch

        n = len(texts)
        chat = [isinstance(p, list) for p in prompts]
        completions = [[{"role": "assistant", "content": t}] if c else t for t, c in zip(texts, chat)]
        keys = sorted({k for row in columns for k in row} - {"prompt", "completion", "completion_ids"})
        kwargs = {k: [row.get(k) for row in columns] for k in keys}
        kwargs.update(prompts=list(prompts), completions=completions, completion_ids=[list(c) for c in completion_ids],
                      trainer_state=_State(global_step=step, max_steps=max_steps))
        per_func = torch.full((n, len(self.names)), math.nan, dtype=torch.float64)
        outcomes, timeouts = None, 0
        for j, name in enumerate(self.names):
            if name == MATH:
                values, outcomes, timeouts = self.math(texts, answers, progress)
            else:
                values = self._call(name, kwargs, step)
            per_func[:, j] = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)
        weights = torch.tensor(self.settings.weights, dtype=torch.float64)
        total = (per_func * weights).nansum(dim=1) if n else torch.zeros(0, dtype=torch.float64)
        total[torch.isnan(per_func).all(dim=1)] = math.nan
        if outcomes is None:
            outcomes = [CORRECT if t > 0 else WRONG for t in total.tolist()]
        return Scores(per_func, total, outcomes, timeouts)

    def _call(self, name: str, kwargs: dict, step: int) -> list[float | None]:
        if self._worker is None:        # killed after a hang: a fresh one for the next call
            self._worker = _Worker(self.user)
        answer = self._worker.call(self.user.index(name), kwargs, self.settings.timeout_s)
        if answer[0] == "ok":
            return answer[1]
        if self._worker.proc.poll() is not None:
            self._worker = None
        _, row, why = answer
        where = ""
        if row is not None:
            where = (f"; row {row + 1}'s prompt: {_short(kwargs['prompts'][row])}, completion: "
                     f"{_short(kwargs['completions'][row])}")
        raise RewardFunctionError(f"reward function {name!r} failed at step {step + 1} on {len(kwargs['completions'])} "
                                  f"completions: {why}{where}. No update was applied for this step. TRL's signature: "
                                  "fn(prompts, completions, **columns) -> list of float or None, one per completion "
                                  "(docs/from_trl.md)")

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None


@dataclass
class _State:
    """What a reward function gets as ``trainer_state`` (TRL's ``TrainerState`` fields that make sense here)."""

    global_step: int
    max_steps: int


def _short(x, limit: int = 80) -> str:
    text = x if isinstance(x, str) else repr(x)
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
