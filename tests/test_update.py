"""Micro-batch planning and collation (the update's bookkeeping), in-process."""

import random

import torch

from lead_fast.update import Sample, collate, plan_micro_batches


def _samples(lengths, seed=0):
    rng = random.Random(seed)
    return [Sample([rng.randrange(3, 50) for _ in range(P)], [rng.randrange(3, 50) for _ in range(R)],
                   rng.uniform(-1, 1), rng.random()) for P, R in lengths]


def test_plan_keeps_every_sample_once_and_respects_the_budget():
    rng = random.Random(1)
    samples = _samples([(rng.randrange(1, 30), rng.randrange(1, 60)) for _ in range(50)])
    budget = 200
    plan = plan_micro_batches(samples, budget)
    assert sorted(id(s) for b in plan for s in b) == sorted(id(s) for s in samples)
    for b in plan:
        longest = max(len(s.prompt) + len(s.response) for s in b)
        assert len(b) == 1 or longest * len(b) <= budget
    lengths = [len(s.prompt) + len(s.response) for b in plan for s in b]
    assert lengths == sorted(lengths)      # shortest first: rows of similar length share a batch


def test_a_row_over_the_budget_gets_a_batch_of_its_own():
    samples = _samples([(5, 5), (50, 100), (5, 6)])
    plan = plan_micro_batches(samples, budget=40)
    assert [len(b) for b in plan] == [2, 1] and len(plan[1][0].response) == 100
    assert plan_micro_batches([], 100) == []


def test_collate_positions_predict_the_response_tokens():
    samples = _samples([(3, 2), (1, 4), (5, 1)])
    samples[0].old_logprobs = torch.tensor([-1.0, -2.0])
    mb = collate(samples, pad_id=0, device="cpu", token_weight=0.25)
    B, T = mb.input_ids.shape
    assert (B, T) == (3, 6)
    assert mb.attention_mask.sum(1).tolist() == [5, 5, 6]
    flat = mb.input_ids.reshape(-1)
    # the token after each position is the target: hidden state at t predicts token t + 1
    assert torch.equal(flat[mb.positions + 1], mb.targets)
    assert mb.targets.tolist() == [t for s in samples for t in s.response]
    assert torch.equal(mb.advantages, torch.tensor([s.advantage for s in samples for _ in s.response]))
    assert torch.equal(mb.correct_ratio, torch.tensor([s.correct_ratio for s in samples for _ in s.response]))
    assert mb.token_weights.tolist() == [0.25] * 7
    assert mb.old_logprobs is None and mb.ref_logprobs is None   # present for only some rows: not used
    assert (mb.input_ids[1, 5:] == 0).all() and (mb.attention_mask[1, 5:] == 0).all()   # right padding
