"""The update: micro-batch planning and collation, packed / padded / shared-prompt rows giving the same
log-probs and gradients, activation checkpointing, rollout-correction weights, the non-finite guard."""

import json
import random
from dataclasses import replace

import pytest
import torch

from lead_fast.ops import LossParams
from lead_fast.update import Sample, collate, plan_micro_batches
from tests.helpers.launch import HELPERS, check, torchrun


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
    assert tok.rollout_logprobs is None and tok.seq_ids.tolist() == [0, 0, 1, 1, 1, 1, 2]
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


def _groups(spec, seed=0):
    """Samples in GRPO's shape: for each (prompt length, response lengths), one prompt shared by its responses."""
    rng = random.Random(seed)
    out = []
    for P, lengths in spec:
        prompt = [rng.randrange(3, 900) for _ in range(P)]
        out += [Sample(prompt, [rng.randrange(3, 900) for _ in range(R)], rng.uniform(-1, 1), rng.random())
                for R in lengths]
    return out


def test_shared_prompt_plan_keeps_each_prompt_together_within_the_budget():
    samples = _groups([(6, [3, 9, 1, 4]), (2, [5, 5]), (11, [30, 2]), (4, [7])])
    random.Random(0).shuffle(samples)          # a mini-batch arrives shuffled
    budget = 30
    plan = plan_micro_batches(samples, budget, shared_prompt=True)
    assert sorted(id(s) for b in plan for s in b) == sorted(id(s) for s in samples)
    from lead_fast.update import row_length, shared_rows

    for b in plan:
        rows = shared_rows(b, budget)
        assert len(rows) == 1 or max(row_length(r) for r in rows) * len(rows) <= budget
        assert all(len(r) == 1 or row_length(r) <= budget for r in rows)
        # no prompt is split into two runs within a batch
        starts = [tuple(r[0].prompt) for r in rows]
        for p in set(starts):
            runs = [i for i, q in enumerate(starts) if q == p]
            assert runs == list(range(runs[0], runs[0] + len(runs)))
    # the 6-token prompt's four responses (17 tokens) share one row; the 11-token prompt's 30-token response
    # is over the budget alone: a row and a batch of its own
    assert any(len(r) == 4 for b in plan for r in shared_rows(b, budget))
    assert [len(b) for b in plan if any(len(s.response) == 30 for s in b)] == [1]


def test_shared_prompt_collate_layout():
    from lead_fast.update import collate_shared

    samples = _groups([(3, [2, 0, 3]), (2, [1])])
    mb = collate_shared(samples, pad_id=0, device="cpu", token_weight=[0.5, 1.0, 0.25, 2.0], budget=100)
    rows, tok = mb.rows, mb.tokens
    assert rows.input_ids.shape == (2, 8) and rows.attention_mask.shape == (2, 1, 8, 8)
    assert rows.input_ids[0].tolist() == samples[0].prompt + samples[0].response + samples[2].response
    assert rows.position_ids[0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5]      # each response continues the prompt
    assert rows.position_ids[1].tolist()[:3] == [0, 1, 2]
    m = rows.attention_mask[0, 0].int()
    assert m[5].tolist() == [1, 1, 1, 0, 0, 1, 0, 0]      # 2nd response's first token: prompt and itself
    assert m[4].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]      # 1st response: prompt and its own tokens
    assert rows.attention_mask[1, 0, 7].tolist() == [True, True, False, True, True, True, True, True]  # padding
    # the prompt's last position predicts each response's first token
    assert rows.hidden_rows.tolist() == [2, 3, 2, 5, 6, 8 + 1]
    assert tok.targets.tolist() == [t for s in samples for t in s.response]
    assert tok.token_weights.tolist() == [0.5, 0.5, 0.25, 0.25, 0.25, 2.0]
    assert tok.seq_ids.tolist() == [0, 0, 2, 2, 2, 3]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prompt_gives_the_padded_log_probs_and_gradients(tiny_model_dir, attn):
    """Each prompt computed once per row, its responses masked apart: the same loss, log-probs and every
    gradient as one padded row per response; rows cut by the budget included."""
    from lead_fast.model import PolicyWithHead, load_model
    from lead_fast.update import collate_shared

    torch.manual_seed(0)
    policy = PolicyWithHead(load_model(tiny_model_dir, torch.float64, torch.device("cpu"), attn), backend="torch")
    samples = _groups([(7, [5, 1, 9, 3]), (2, [4, 4]), (12, [6])], seed=3)
    params = LossParams(clip_low=0.2, clip_high=0.28)
    # old log-probs a little off the current ones, so that some ratios clip (float32, as the head takes them)
    old = torch.linspace(-9.0, -6.0, sum(len(s.response) for s in samples))
    results = []
    for mb in (collate(samples, 0, "cpu", 0.1), collate_shared(samples, 0, "cpu", 0.1, budget=100),
               collate_shared(samples, 0, "cpu", 0.1, budget=16)):
        policy.zero_grad()
        lp = policy(mb.rows, mb.tokens, params, mode="logprobs")
        out = policy(mb.rows, replace(mb.tokens, old_logprobs=old), params)
        out.loss.backward()
        results.append((lp, out.loss.detach(), [p.grad.clone() for p in policy.parameters()]))
    assert results[2][0].shape == results[0][0].shape
    for lp, loss, grads in results[1:]:
        # a float64 model, but transformers computes RMSNorm (and eager attention's softmax) in float32, and
        # the prompt's gradient is one sum over its responses where padded rows give one per copy: agreement
        # at float32's rounding, no closer (a response seeing another's tokens would be off by far more)
        torch.testing.assert_close(lp, results[0][0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(loss, results[0][1], rtol=1e-7, atol=1e-9)
        for a, b in zip(results[0][2], grads):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6 * a.abs().max().item())


def test_activation_checkpointing_keeps_less_and_changes_nothing(tiny_model_dir):
    """``model.activation_checkpointing``: the forward keeps far fewer tensors for the backward (each layer is
    recomputed there), for the same loss and gradients, with no dropout (the model stays in eval mode)."""
    from lead_fast.model import checkpoint_layers

    mb = collate(_groups([(7, [5, 1, 9]), (3, [4])], seed=1), 0, "cpu", 0.1)
    results = []
    for checkpointed in (False, True):
        policy = _policy(tiny_model_dir)
        if checkpointed:
            checkpoint_layers(policy)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t,
                                                      lambda t: t):
            out = policy(mb.rows, replace(mb.tokens, correct_ratio=None), LossParams())
        out.loss.backward()
        results.append((sum(saved), out.loss.detach(), [p.grad for p in policy.parameters()]))
        assert not policy.lm.training and not policy.lm.model.layers[0].self_attn.training
    (kept0, loss0, grads0), (kept1, loss1, grads1) = results
    assert kept1 < kept0 / 2, (kept0, kept1)
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=0)
    for a, b in zip(grads0, grads1):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def _expected_mismatch(lengths, case, cap=2.0):
    """The mismatch metrics worked out by hand from the helper's per-token offsets (ratio exp(-delta)), for
    one of its cases: TRL's correction (the lower bound 0.5 where the case sets one), then the rejection (1
    inside [0.5, 2], 0 outside)."""
    import math

    from tests.helpers.correction_update import CASES, DELTAS

    c = CASES[case]
    mode, low, rejection = c["correction"], c.get("correction_low") or 0.0, c.get("rejection", "none")
    weights, flags, k3s, gaps = [], [], [], []
    for R in lengths:
        logr = [-DELTAS[t % len(DELTAS)] for t in range(R)]
        ratios = [math.exp(x) for x in logr]
        k3s += [r - 1 - x for r, x in zip(ratios, logr)]
        gaps += [abs(x) for x in logr]
        seq = math.exp(sum(logr))
        for r in ratios:
            x = r if mode.startswith("token") or mode == "none" else seq
            inside = low <= x <= cap
            if mode == "none":
                w, f = (x, x > cap) if rejection == "none" else (1.0, False)   # no correction: the raw ratio
            elif mode.endswith("truncate"):
                w, f = min(max(x, low), cap), not inside
            else:
                w, f = (x if inside else 0.0), not inside
            if rejection != "none":
                y = {"token": r, "geometric": math.exp(sum(logr) / R)}[rejection]
                if not 0.5 <= y <= 2.0:
                    w, f = 0.0, True
            weights.append(w)
            flags.append(f)
    n = len(weights)
    return dict(is_weight_mean=sum(weights) / n, flag=sum(flags) / n, mismatch_kl=sum(k3s) / n, gap=sum(gaps) / n)


@pytest.mark.parametrize("world,packing", [(1, "off"), (2, "off"), (2, "on")])
def test_a_synthetic_mismatch_gives_the_hand_computed_weights_and_masks(tiny_model_dir, tmp_path, world, packing):
    """Engine log-probs = the trainer's + known offsets: every correction's and rejection's weights, truncated
    or masked fractions and the k3 mismatch equal the hand-computed ones, padded and packed, on 1 and 2 ranks."""
    import json

    from tests.helpers.correction_update import CASES

    from tests.helpers.launch import HELPERS, TRAIN_DATA, check, torchrun

    out = tmp_path / "res.json"
    check(torchrun(world, [str(HELPERS / "correction_update.py"), tiny_model_dir, str(TRAIN_DATA), str(out),
                           "--optim.packing", packing]))
    r = json.loads(out.read_text())
    assert r["world"] == world
    assert set(r["results"]) == set(CASES)
    for mode, res in r["results"].items():
        want = _expected_mismatch(r["lengths"], mode)
        flag = res["is_masked_frac"] if mode.endswith(("mask", "rejection")) else res["is_truncated_frac"]
        assert res["updated"], mode
        assert res["is_weight_mean"] == pytest.approx(want["is_weight_mean"], rel=1e-5), mode
        assert flag == pytest.approx(want["flag"], abs=1e-12), mode
        assert res["mismatch_kl"] == pytest.approx(want["mismatch_kl"], rel=1e-5), mode
        assert res["logprob_gap"] == pytest.approx(want["gap"], rel=1e-5), mode


def test_nonfinite_step_is_skipped_and_counted(tiny_model_dir, tmp_path):
    # the update is called directly (no rollouts): any model will do, so the cheap one (CI's device leg
    # builds no embedded model for it)
    res = tmp_path / "nf.json"
    check(torchrun(2, [str(HELPERS / "nonfinite_update.py"), tiny_model_dir, str(res)]))
    r = json.loads(res.read_text())
    assert r["skipped"] == 1 and not r["updated"] and r["unchanged"]
    assert "2 steps in a row" in r["stopped"]
