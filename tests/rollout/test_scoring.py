"""pass@k and the majority vote (cons@n) the trainer's eval and the eval command share."""

import itertools
import math

import pytest

from lead_fast.rollout.scoring import default_ks, majority_vote, pass_at_k


def brute_pass_at_k(n, c, k):
    """The fraction of k-subsets of n samples (c correct) that hold at least one correct sample."""
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_against_every_subset():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_hand_cases_and_large_n():
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 10, 1) == 1.0 and pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)                   # 3 of the 6 pairs hold the correct one
    assert pass_at_k(10, 6, 5) == 1.0                                 # any 5 of 10 include one of the 6
    v = pass_at_k(512, 3, 64)                                         # no overflow for n in the hundreds
    assert v == pytest.approx(1 - math.comb(509, 64) / math.comb(512, 64), rel=1e-12)
    for bad in ((3, 4, 1), (3, 1, 4), (3, 1, 0)):
        with pytest.raises(ValueError):
            pass_at_k(*bad)
    assert default_ks(1) == [1] and default_ks(8) == [1, 2, 4, 8] and default_ks(12) == [1, 2, 4, 8, 12]


def test_majority_vote_counts_equal_answers_together():
    assert majority_vote(["3", "1/2", "0.5", "\\frac{1}{2}", "3"]) == "1/2"      # three equal answers win
    assert majority_vote([None, "7", None]) == "7"
    assert majority_vote([None, None]) is None and majority_vote([]) is None
    assert majority_vote(["4", "5", "5", "4"]) == "4"                 # a tie: the class seen first
    assert majority_vote(["5", "4", "4", "5"]) == "5"
