import random
import time

import pytest

from lead_fast.algo import grade, grade_batch, is_degenerate_text


@pytest.fixture(scope="module")
def sample(train_data):
    rng = random.Random(0)
    return rng.sample(train_data, 40)


def test_right_answer_grades_1_wrong_grades_0(sample):
    for row in sample[:15]:
        ans = row["answer"].strip().strip("$")
        assert grade(f"Working it out... so the answer is \\boxed{{{ans}}}.", row["answer"]) == 1, row["answer"]
        assert grade("I think it is \\boxed{123456789}.", row["answer"]) == 0, row["answer"]


def test_last_boxed_after_think_counts():
    assert grade("<think>maybe \\boxed{5}</think> final: \\boxed{7}", "7") == 1
    assert grade("<think>maybe \\boxed{7}</think> final: \\boxed{5}", "7") == 0
    assert grade("\\boxed{7} then again \\boxed{5}", "5") == 1
    assert grade("\\boxed{\\frac{1}{2}}", "0.5") == 1
    assert grade("<think>\\boxed{7}</think> no box here", "7") == -1  # only text after </think> counts


def test_no_answer_and_degenerate():
    assert grade("I don't know.", "3") == -1
    assert grade("", "3") == -1
    assert grade("the answer is " + "so so " * 40, "3") == -2          # 2-gram repeated 40 times
    assert grade("x" * 130, "3") == -2                                # a 130-character word
    assert grade("a b c " * 12 + " \\boxed{3}", "3") == 1             # repetition but a parsable answer
    assert not is_degenerate_text("one two three four five six seven eight nine ten")
    assert is_degenerate_text(" ".join(["w1 w2 w3"] * 10))
    assert not is_degenerate_text(" ".join(["w1 w2 w3"] * 9))


def test_require_think():
    assert grade("answer \\boxed{3}", "3", require_think=True) == -1
    assert grade("<think>hmm</think>answer \\boxed{3}", "3", require_think=True) == 1
    assert grade("answer \\boxed{3}", "3", require_think=False) == 1


def test_grade_batch_matches_grade(sample):
    resp, ans = [], []
    for i, row in enumerate(sample):
        a = row["answer"].strip().strip("$")
        resp.append([f"\\boxed{{{a}}}", "\\boxed{99999}", "no answer", "ha " * 50][i % 4])
        ans.append(row["answer"])
    got = grade_batch(resp, ans)
    assert got == [grade(r, a) for r, a in zip(resp, ans)]
    assert got[:4] == [1, 0, -1, -2]


def test_grade_batch_hostile_latex_costs_at_most_its_timeout():
    hostile = [
        "\\boxed{" + "{" * 3000 + "1" + "}" * 3000 + "}",          # deep nesting
        "\\boxed{9^{9^{9^{9^{9^{9^{9^{9}}}}}}}}",                   # a tower of exponents
        "\\boxed{" + "\\sqrt{" * 400 + "2" + "}" * 400 + "}",
        "\\boxed{(10^{10^{10}})!}",
    ]
    good = ["\\boxed{4}"] * 4
    t0 = time.monotonic()
    out = grade_batch(hostile + good, ["1"] * 4 + ["4"] * 4, timeout_s=2.0, num_workers=2)
    took = time.monotonic() - t0
    assert out[4:] == [1, 1, 1, 1]
    assert all(o in (0, -1) for o in out[:4])
    # 4 hostile items on 2 workers: two rounds of at most 2 s each, plus worker restarts.
    assert took < 30, took


def test_grade_batch_errors():
    with pytest.raises(ValueError, match="2 responses but 1 answers"):
        grade_batch(["a", "b"], ["1"])
    assert grade_batch([], []) == []
    with pytest.raises(TypeError):
        grade(None, "1")
