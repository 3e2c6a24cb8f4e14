import random
import time

import pytest

from lead_fast.algo import grade, is_degenerate_text


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


def test_non_strings_are_a_type_error():
    with pytest.raises(TypeError):
        grade(None, "1")


def test_math_verify_timeout_grades_wrong_instead_of_raising(monkeypatch):
    # math-verify's TimeoutException is a BaseException: it must not escape grade(). The timeout must
    # really fire here (in verify: 10^10^10^10 against 1), or the test shows nothing
    import math_verify
    from math_verify.errors import TimeoutException

    raised = []

    def verify(*a, **kw):
        try:
            return real(*a, **kw)
        except BaseException as e:
            raised.append(type(e))
            raise

    real = math_verify.verify         # grade() imports it from the package when it runs
    monkeypatch.setattr(math_verify, "verify", verify)
    assert grade("\\boxed{10^{10^{10^{10}}}}", "1", timeout_s=1) == 0
    assert raised == [TimeoutException]


def test_last_box_is_found_in_linear_time():
    t0 = time.monotonic()
    assert grade("\\boxed{" * 150_000, "1") in (-1, -2)         # 1 MB of unclosed boxes
    assert grade("x " * 200_000 + "\\boxed{1}" + " \\boxed{" * 50_000, "1") == 1
    assert time.monotonic() - t0 < 5


def test_nested_and_unclosed_boxes():
    assert grade("\\boxed{\\frac{1}{2}} and \\boxed{7", "\\frac{1}{2}") == 1   # an unclosed last box is no answer
    assert grade("{ \\boxed{3} } \\boxed{\\boxed{4}}", "4") == 1


def test_answer_spans_and_unboxed_responses():
    r = "<think>so \\boxed{7}</think> The answer is \\boxed{5}"
    assert grade(r, "5") == 1 and grade(r, "7") == 0                                  # after the last </think>
    assert grade(r, "7", answer_from="before_think") == 1                             # the official span
    assert grade("<think>\\boxed{3} then \\boxed{4}</think>", "4", answer_from="before_think") == 1
    cut_off = "<think>still thinking \\boxed{4}"                                      # never reached </think>
    assert grade(cut_off, "4", answer_from="before_think") == -1
    assert grade(cut_off, "4", answer_from="before_think", unboxed_is_wrong=True) == -1
    finished = "<think>I give up</think>"
    assert grade(finished, "4", answer_from="before_think") == -1
    assert grade(finished, "4", answer_from="before_think", unboxed_is_wrong=True) == 0
    assert grade("<think>" + "so so " * 40 + "</think>", "4", answer_from="before_think") == -2
    with pytest.raises(ValueError, match="answer_from must be one of"):
        grade(r, "5", answer_from="inside")


def test_choice_labels_are_stripped_unless_the_answer_is_a_letter():
    assert grade("\\boxed{\\textbf{(D)}\\; 192}", "192") == 1
    assert grade("\\boxed{(D) 31}", "31") == 1
    assert grade("\\boxed{2\\sqrt{10}~\\textbf{(A)}}", "2\\sqrt{10}") == 1
    assert grade("\\boxed{\\mathrm{(A)}\\ 0}", "0") == 1
    assert grade("\\boxed{\\textbf{(D)}}", "192") == 0           # only a letter: still wrong
    assert grade("\\boxed{(D)}", "192") == 0
    assert grade("\\boxed{P(A) = 0.3}", "0.3") == 1              # "(A)" inside is mathematics, kept
    assert grade("\\boxed{\\textbf{(C)}}", "C") == 1             # the gold is a letter: nothing stripped
    assert grade("\\boxed{\\textbf{(C)} 12}", "\\textbf{(C)}") == 0


def test_reference_solutions_grade_correct(train_data):
    """The shipped training file's reference solutions that end in a box, against their own gold answers."""
    from lead_fast.algo import grade_batch
    from lead_fast.algo.grading import _last_boxed

    rows = [r for r in train_data if r.get("solution") and _last_boxed(r["solution"])]
    assert len(rows) == 689
    out = grade_batch([r["solution"] for r in rows], [r["answer"] for r in rows], timeout_s=10.0)
    assert sum(o == 1 for o in out) / len(rows) >= 0.98, sum(o == 1 for o in out)
