"""Micro-batch planning and collation (the update's bookkeeping), in-process."""

import random
from dataclasses import replace

import torch

from lead_fast.ops import LossParams
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
    rows, tok = mb.rows, mb.tokens
    B, T = rows.input_ids.shape
    assert (B, T) == (3, 6)
    assert rows.attention_mask.sum(1).tolist() == [5, 5, 6]
    flat = rows.input_ids.reshape(-1)
    # the token after each hidden row is the target: hidden state at t predicts token t + 1
    assert torch.equal(flat[rows.hidden_rows + 1], tok.targets)
    assert tok.targets.tolist() == [t for s in samples for t in s.response]
    assert torch.equal(tok.advantages, torch.tensor([s.advantage for s in samples for _ in s.response]))
    assert torch.equal(tok.correct_ratio, torch.tensor([s.correct_ratio for s in samples for _ in s.response]))
    assert tok.token_weights.tolist() == [0.25] * 7
    assert tok.old_logprobs is None and tok.ref_logprobs is None   # present for only some rows: not used
    assert mb.rollout_logprobs is None
    assert (rows.input_ids[1, 5:] == 0).all() and (rows.attention_mask[1, 5:] == 0).all()   # right padding


def test_balanced_partition_keeps_everything_within_budget():
    from lead_fast.update import balanced_partition, seq_cost

    rng = random.Random(3)
    samples = _samples([(rng.randrange(1, 30), rng.randrange(1, 200)) for _ in range(40)])
    budget = 600
    total = sum(len(s.prompt) + len(s.response) for s in samples)
    bins = balanced_partition(samples, -(-total // budget), budget, width=64)
    assert sorted(id(s) for b in bins for s in b) == sorted(id(s) for s in samples)
    assert all(sum(len(s.prompt) + len(s.response) for s in b) <= budget for b in bins)
    costs = [sum(seq_cost(len(s.prompt) + len(s.response), 64) for s in b) for b in bins]
    assert max(costs) <= 2 * min(costs)                      # largest-first onto the lightest bin: balanced
    big = _samples([(10, 900)])
    assert [len(b) for b in balanced_partition(big + samples[:3], 2, budget, 64)][0] >= 1   # over budget: alone
    assert balanced_partition([], 3, budget, 64) == []


def test_collate_packed_restarts_positions_and_has_no_mask():
    from lead_fast.update import collate_packed

    samples = _samples([(3, 2), (1, 4), (5, 1)])
    mb = collate_packed(samples, "cpu", [0.5, 0.25, 1.0])
    rows = mb.rows
    assert rows.input_ids.shape == (1, 16) and rows.attention_mask is None
    assert rows.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5]
    assert torch.equal(rows.input_ids[0][rows.hidden_rows + 1], mb.tokens.targets)
    assert mb.tokens.token_weights.tolist() == [0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 1.0] and rows.seq_lens == (5, 5, 6)


def _policy(model_dir):
    from lead_fast.model import PolicyWithHead, load_model

    return PolicyWithHead(load_model(model_dir, torch.float32, torch.device("cpu")), backend="torch")


def test_packed_and_padded_give_the_same_logprobs_and_gradients(tiny_model_dir):
    from lead_fast.update import collate_packed

    torch.manual_seed(0)
    policy = _policy(tiny_model_dir)
    rng = random.Random(5)
    samples = [Sample([rng.randrange(3, 900) for _ in range(P)], [rng.randrange(3, 900) for _ in range(R)],
                      rng.uniform(-1, 1), rng.random()) for P, R in ((7, 5), (2, 9), (12, 1), (4, 4))]
    results = []
    for mb in (collate(samples, 0, "cpu", 0.1), collate_packed(samples, "cpu", 0.1)):
        policy.zero_grad()
        lp = policy(mb.rows, mb.tokens, LossParams(), mode="logprobs")
        out = policy(mb.rows, replace(mb.tokens, correct_ratio=None), LossParams())
        out.loss.backward()
        results.append((lp, out.loss.detach(), [p.grad.clone() for p in policy.parameters()]))
    (lp1, l1, g1), (lp2, l2, g2) = results
    torch.testing.assert_close(lp2, lp1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    # changing one packed sequence's tokens changes no other sequence's log-probs
    changed = [Sample(s.prompt[:], s.response[:], s.advantage, s.correct_ratio) for s in samples]
    changed[1].prompt = [t + 1 for t in changed[1].prompt]
    mb = collate_packed(changed, "cpu", 0.1)
    with torch.no_grad():
        lp3 = policy(mb.rows, mb.tokens, LossParams(), mode="logprobs")
    ends = [0, 5, 14, 15, 19]
    for i in (0, 2, 3):
        assert torch.equal(lp3[ends[i]:ends[i + 1]], lp2[ends[i]:ends[i + 1]]), i
    assert not torch.equal(lp3[5:14], lp2[5:14])


def test_liger_kernels_are_patched_in_only_where_asked(tiny_model_dir):
    from lead_fast.model import apply_liger_kernels, load_model

    lm = load_model(tiny_model_dir, torch.float32, torch.device("cpu"))
    assert apply_liger_kernels(lm, "auto", torch.device("cpu")) == []          # CPU: off
    assert "Liger" not in type(lm.model.layers[0].mlp).forward.__qualname__
    # tests run Triton under the interpreter, so "on" can patch a CPU model here (it does not run it)
    assert apply_liger_kernels(lm, "on", torch.device("cpu")) == ["rope", "rms_norm", "swiglu"]
    assert lm.model.norm.forward.__qualname__.startswith("LigerRMSNorm")
    assert lm.model.layers[0].mlp.forward.__qualname__.startswith("LigerSwiGLUMLP")
    assert lm.lm_head.forward.__qualname__.startswith("Linear")              # the head is ours, not Liger's
