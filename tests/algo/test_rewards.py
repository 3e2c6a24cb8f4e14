import random

import pytest
import torch

from lead_fast.algo import difficulty_weight, groups_without_signal, lead_advantages, lead_rewards
from tests.helpers.reference import loop_advantages, loop_rewards


def _case(sizes, seed, outcome_pool=(1, 0, -1, -2), shuffle=True):
    rng = random.Random(seed)
    outcomes, lengths, gids = [], [], []
    for g, n in enumerate(sizes):
        gid = rng.randrange(-10**6, 10**6) * 7 + g  # arbitrary, non-contiguous ids
        for _ in range(n):
            outcomes.append(rng.choice(outcome_pool))
            lengths.append(rng.randrange(1, 9000))
            gids.append(gid)
    if shuffle:  # members of a group are not adjacent
        perm = list(range(len(gids)))
        rng.shuffle(perm)
        outcomes, lengths, gids = ([x[i] for i in perm] for x in (outcomes, lengths, gids))
    return outcomes, lengths, gids


SIZES = [[1], [2], [3], [16], [1, 2, 3, 16], [16, 16, 16, 16, 5]]


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("min_short_len", [0.0, 4000.0])
@pytest.mark.parametrize("pool", [(1, 0, -1, -2), (1,), (0,), (-1, -2), (1, 0)])
def test_rewards_match_loop(sizes, min_short_len, pool):
    for seed in range(3):
        o, L, g = _case(sizes, seed, pool)
        got = lead_rewards(o, L, g, min_short_len=min_short_len)
        want = loop_rewards(o, L, g, min_short_len=min_short_len)
        assert got.dtype == torch.float32 and got.shape == (len(o),)
        torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32), rtol=1e-5, atol=1e-6)


def test_rewards_custom_values_and_alpha():
    o, L, g = _case([5, 7, 2], 11)
    kw = dict(alpha=0.2, correct_reward=2.0, incorrect_reward=-0.5, format_error_reward=-0.25,
              degenerate_reward=-3.0, min_short_len=100.0)
    torch.testing.assert_close(lead_rewards(o, L, g, **kw), torch.tensor(loop_rewards(o, L, g, **kw)),
                               rtol=1e-5, atol=1e-6)


def test_rewards_shorter_correct_gets_more():
    r = lead_rewards([1, 1, 1, 0], [100, 200, 300, 50], [0, 0, 0, 0])
    assert r[0] > r[1] > r[2] and r[3] == -1.0
    assert abs(r[1].item() - 1.0) < 1e-6  # the mean length keeps the base reward


def test_min_short_len_leaves_short_groups_unshaped():
    # 3 shortest average 200 <= 4000: unshaped; the other group's 3 shortest average 5000: shaped.
    r = lead_rewards([1, 1, 1, 1, 1, 1], [100, 200, 300, 5000, 5000, 6000], [0, 0, 0, 1, 1, 1], min_short_len=4000)
    assert torch.equal(r[:3], torch.ones(3))
    assert r[5] < 1.0 < r[3]


def test_rewards_reject_bad_input():
    with pytest.raises(ValueError, match="same length"):
        lead_rewards([1, 0], [3], [0, 0])
    with pytest.raises(ValueError, match="outcomes must be"):
        lead_rewards([1, 5], [3, 4], [0, 0])


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("reweight", [True, False])
def test_advantages_match_loop(sizes, reweight):
    for seed in range(3):
        o, L, g = _case(sizes, seed)
        r = lead_rewards(o, L, g)
        adv, rho = lead_advantages(r, g, reweight=reweight)
        want_adv, want_rho = loop_advantages(r.tolist(), g, reweight=reweight)
        torch.testing.assert_close(adv, torch.tensor(want_adv, dtype=torch.float32), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(rho, torch.tensor(want_rho, dtype=torch.float32))


def test_advantages_custom_weights():
    r = torch.tensor([1.0, -1.0, -1.0, -1.0, 0.5, 0.7, -2.0])
    g = [4, 4, 4, 4, 9, 9, 9]
    kw = dict(w_min=0.1, w_max=3.0, midpoint=0.5, steepness=4.0, eps=1e-3)
    adv, _ = lead_advantages(r, g, **kw)
    torch.testing.assert_close(adv, torch.tensor(loop_advantages(r.tolist(), g, **kw)[0]), rtol=1e-5, atol=1e-6)


def test_difficulty_weight_shape():
    x = torch.tensor([0.0, 0.75, 1.0])
    w = difficulty_weight(x)
    assert w[0] > w[1] > w[2]
    assert abs(w[1].item() - (0.4 + 1.1 / 2)) < 1e-6  # midpoint is halfway between w_min and w_max


def test_all_equal_groups_have_zero_advantage_and_are_flagged():
    r = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, 0.3, 1.0])
    g = [0, 0, 0, 1, 1, 2, 2]
    adv, _ = lead_advantages(r, g)
    assert torch.all(adv[:5] == 0)
    assert groups_without_signal(r, g).tolist() == [True] * 5 + [False, False]


def test_group_of_one_uses_mean0_std1():
    adv, rho = lead_advantages(torch.tensor([0.8]), [5], reweight=False)
    assert abs(adv.item() - 0.8 / (1 + 1e-6)) < 1e-6 and rho.item() == 1.0


def test_mismatched_lengths_are_errors():
    with pytest.raises(ValueError, match="same length"):
        groups_without_signal([1.0, 0.0, 1.0], [0, 0])
    with pytest.raises(ValueError, match="same length"):
        lead_advantages([1.0, 0.0], [0])
    with pytest.raises(ValueError, match="same length"):
        lead_rewards([1, 0], [10, 20, 30], [0, 0])


# --- The official run's group filter and loss aggregation, as plain loops written from its code ---------
# (aeroplanepaper/GRPO-LEAD: verl/trainer/ppo/ray_trainer.py, the rejection_sample filter;
#  verl/workers/actor/dp_actor.py + core_algos.compute_policy_loss, masked token mean per micro-batch
#  scaled by len(micro_batch) / ppo_mini_batch_size)

def official_valid_mask(rewards, uids):
    valid = [True] * len(rewards)
    for uid in set(uids):
        idx = [i for i, u in enumerate(uids) if u == uid]
        r = [rewards[i] for i in idx]
        if all(x <= 0 for x in r):
            for i in idx:
                valid[i] = False
        elif all(x > 0 for x in r) and all(x == 1 for x in r):
            for i in idx:
                valid[i] = False
    return valid


@pytest.mark.parametrize("seed", range(6))
def test_filter_matches_the_official_one(seed):
    rng = random.Random(seed)
    rewards, uids = [], []
    for g in range(40):
        kind = rng.choice(["mixed", "all_wrong", "all_one", "all_correct_shaped", "neg_mixed"])
        for _ in range(8):
            if kind == "all_wrong":
                r = rng.choice([-1.0, -2.0, 0.0])
            elif kind == "all_one":
                r = 1.0
            elif kind == "all_correct_shaped":
                r = rng.uniform(0.8, 1.2)
            elif kind == "neg_mixed":
                r = rng.choice([-1.0, -2.0])
            else:
                r = rng.choice([1.0, 1.1, -1.0, 0.0, -2.0])
            rewards.append(r)
            uids.append(g * 3 + 1)
    want = [not v for v in official_valid_mask(rewards, uids)]
    got = groups_without_signal(rewards, uids).tolist()
    # the official filter keeps a group of equal rewards > 0 other than 1 (zero advantage: no gradient
    # either way); lead_fast drops it. Everything else agrees.
    differ = [i for i in range(len(want)) if want[i] != got[i]]
    assert all(len({rewards[j] for j in range(len(uids)) if uids[j] == uids[i]}) == 1 and rewards[i] > 0
               for i in differ)
    assert groups_without_signal([-1.0, -2.0, -1.0, 0.0], [5] * 4).all()                       # no correct
    assert not groups_without_signal([-1.0, -2.0, -1.0, 0.0], [5] * 4, drop_no_correct=False).any()


def official_loss(token_losses_per_seq, micro_batches, ppo_mini_batch_size):
    """verl's actor loss for one mini-batch: per micro-batch a masked token mean, times
    len(micro) / ppo_mini_batch_size, summed over micro-batches."""
    total = 0.0
    for mb in micro_batches:
        toks = [x for i in mb for x in token_losses_per_seq[i]]
        total += sum(toks) / len(toks) * (len(mb) / ppo_mini_batch_size)
    return total


def test_aggregations_match_plain_loops():
    from lead_fast.algo import loss_token_weights

    rng = random.Random(0)
    lengths = [rng.randrange(1, 50) for _ in range(12)]
    losses = [[rng.uniform(-1, 1) for _ in range(n)] for n in lengths]
    # token mean: every token weighs 1 / total tokens
    w = loss_token_weights(lengths, agg="token_mean")
    assert w.shape == (12,)
    got = sum(w[i].item() * sum(losses[i]) for i in range(12))
    assert got == pytest.approx(sum(map(sum, losses)) / sum(lengths), rel=1e-12)
    # mean over sequences of token means; official micro-batches of one sequence each, nominal size 16
    w = loss_token_weights(lengths, agg="seq_mean_token_mean", num_sequences=16)
    got = sum(w[i].item() * sum(losses[i]) for i in range(12))
    assert got == pytest.approx(official_loss(losses, [[i] for i in range(12)], 16), rel=1e-12)
    w = loss_token_weights(lengths, agg="seq_mean_token_mean")   # normalized by the kept count
    got = sum(w[i].item() * sum(losses[i]) for i in range(12))
    assert got == pytest.approx(sum(sum(x) / len(x) for x in losses) / 12, rel=1e-12)
    with pytest.raises(ValueError, match="agg must be one of"):
        loss_token_weights(lengths, agg="mean")
    with pytest.raises(ValueError, match="num_sequences=3 is smaller"):
        loss_token_weights(lengths, agg="seq_mean_token_mean", num_sequences=3)
