"""Reward functions with TRL's signature: what they receive, how their values combine (TRL's rule: a weighted
sum, None as 0 unless every function gave None), TRL's own accuracy_reward run unchanged, and the paragraph a
bad function gets (raises, wrong count, a non-number, hangs, dies, cannot be imported)."""

import json
import math

import pytest
import torch

from lead_fast.algo.grading import CORRECT, WRONG
from lead_fast.algo.reward_funcs import MATH, RewardFunctions, RewardSettings
from lead_fast.errors import ConfigError, RewardFunctionError

MOD = "tests.helpers.user_rewards"
FILE = "tests/helpers/user_rewards.py"

CHAT = [{"role": "user", "content": "What is 2 + 3? Put the final answer within \\boxed{}."}]
TEXTS = ["It is \\boxed{5}.", "\\boxed{6}", "   ", "5, so \\boxed{5}"]
IDS = [[1, 2, 3, 4], [5, 6], [7], [8, 9, 10]]
COLUMNS = [{"solution": "5", "max_len": 8, "level": "easy"}] * 4


@pytest.fixture
def funcs():
    made = []

    def make(*names, weights=None, timeout_s=20.0):
        f = RewardFunctions(RewardSettings(tuple(names), tuple(weights or [1.0] * len(names)), timeout_s))
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def _score(f, prompts=None, step=0, texts=TEXTS, answers=None):
    n = len(texts)
    return f.score(prompts or [CHAT] * n, texts, IDS[:n], COLUMNS[:n], answers or ["5"] * n, step=step, max_steps=9)


def test_a_function_gets_trl_arguments(funcs, tmp_path, monkeypatch):
    monkeypatch.setenv("ECHO_FILE", str(tmp_path / "echo.jsonl"))
    f = funcs(f"{MOD}:echo")
    s = _score(f, step=2)
    got = json.loads((tmp_path / "echo.jsonl").read_text())
    assert got["prompts"] == [CHAT] * 4           # chat prompts: the messages, and completions as messages too
    assert got["completions"] == [[{"role": "assistant", "content": t}] for t in TEXTS]
    assert got["completion_ids"] == IDS and (got["step"], got["max_steps"]) == (2, 9)
    assert got["columns"] == {"solution": ["5"] * 4, "max_len": [8] * 4, "level": ["easy"] * 4}
    assert s.total.tolist() == [2000.0, 2001.0, 2002.0, 2003.0]
    assert s.outcomes == [CORRECT] * 4         # without the math reward, a reward > 0 counts as correct
    _score(f, prompts=["What is 2 + 3?"] * 4)      # text prompts: text completions
    got = [json.loads(line) for line in (tmp_path / "echo.jsonl").read_text().splitlines()][1]
    assert got["prompts"] == ["What is 2 + 3?"] * 4 and got["completions"] == TEXTS


def test_weighted_sum_none_counts_as_zero_unless_every_function_gave_none(funcs, tmp_path, monkeypatch):
    monkeypatch.setenv("ECHO_FILE", str(tmp_path / "echo.jsonl"))
    f = funcs(f"{FILE}:brevity", MATH, weights=[2.0, 0.5])
    s = _score(f)
    nan = math.nan
    brevity = [-4 / 8, -2 / 8, nan, -3 / 8]           # None for the blank response
    math_reward = [1.0, -1.0, 0.0, 1.0]                         # correct, wrong, no answer, correct
    torch.testing.assert_close(s.per_func, torch.tensor([brevity, math_reward], dtype=torch.float64).T,
                               equal_nan=True)
    assert s.total.tolist() == [2 * brevity[0] + 0.5, 2 * brevity[1] - 0.5, 0.0, 2 * brevity[3] + 0.5]
    assert s.outcomes == [CORRECT, WRONG, -1, CORRECT]          # the math reward's own codes
    alone = funcs(f"{MOD}:nan_and_none")
    s = _score(alone)
    assert math.isnan(s.total[0]) and math.isnan(s.total[1]) and s.total[2:].tolist() == [1.0, 1.0]
    assert s.outcomes == [WRONG, WRONG, CORRECT, CORRECT]


def test_trls_own_accuracy_reward_runs_unchanged_and_agrees_with_a_direct_call(funcs):
    from trl.rewards import accuracy_reward

    f = funcs(f"{MOD}:accuracy_reward", MATH)
    s = _score(f)
    direct = accuracy_reward([[{"role": "assistant", "content": t}] for t in TEXTS], ["5"] * 4)
    assert s.per_func[:, 0].tolist() == direct == [1.0, 0.0, 0.0, 1.0]


BAD = {
    "flaky": r"reward function 'tests.helpers.user_rewards:flaky' failed at step 2 on 4 completions: it raised "
             r"ValueError: no rubric for this prompt \(user_rewards.py line \d+, in flaky\)\. No update was applied",
    "short_list": r"failed at step 2 on 4 completions: it returned 3 values for 4 completions \(one per completion, "
                  r"or None\)\. No update",
    "text_at_row_3": r"failed at step 2 on 4 completions: row 4 is 'high' \(a str\), not a finite number or None; "
                     r"row 4's prompt: .*What is 2 \+ 3.*, completion: .*5, so .*boxed\{5\}.*\. No update",
    "hangs": r"failed at step 2 on 4 completions: it did not return within algo.reward_timeout_s=2 s \(its process "
             r"was killed\)",
    "dies": r"failed at step 2 on 4 completions: its process died \(exit code 3",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_function_is_named_with_the_step_and_the_first_bad_row(funcs, name):
    f = funcs(f"{MOD}:{name}", timeout_s=2.0)
    if name == "flaky":
        assert _score(f, step=0).total.tolist() == [0.5] * 4       # fine at the first step
    with pytest.raises(RewardFunctionError, match=BAD[name]):
        _score(f, step=1)
    if name in ("hangs", "dies"):       # a fresh worker takes the next call
        with pytest.raises(RewardFunctionError, match=BAD[name]):
            _score(f, step=1)


@pytest.mark.parametrize("spec, why", [
    (f"{MOD}:missing", r"tests.helpers.user_rewards has no 'missing' \(its functions: brevity, dies, echo, flaky, "),
    (f"{MOD}:NOT_A_FUNCTION", r"tests.helpers.user_rewards.NOT_A_FUNCTION is a int, not a function"),
    ("no_such_module_here:f", r"ModuleNotFoundError: No module named 'no_such_module_here'"),
    ("missing/rewards.py:f", r"missing/rewards.py is not a file$"),
])
def test_a_function_that_cannot_be_loaded_stops_the_run_before_it_starts(spec, why):
    with pytest.raises(ConfigError, match=rf"reward function '{spec}' \(algo.reward_funcs\) cannot be loaded: {why}"):
        RewardFunctions(RewardSettings((spec,), (1.0,)))
