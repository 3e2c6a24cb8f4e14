"""Straightforward implementations written from the definitions in docs/design.md, for tests only."""

import math

import torch


def naive_grpo_loss(hidden, weight, targets, advantages, token_weights, *, old_logprobs=None, ref_logprobs=None,
                    bias=None, clip_low=0.2, clip_high=0.2, kl_coef=0.0, entropy_coef=0.0, temperature=1.0,
                    correct_ratio=None, w_min=0.4, w_max=1.5, midpoint=0.75, steepness=10.0,
                    rollout_logprobs=None, seq_ids=None, rollout_correction="none", correction_cap=2.0,
                    correction_low=None, rejection="none", rejection_low=0.5, rejection_high=2.0):
    """Full-logits float64 autograd version of the loss. Returns (loss, logp, entropy, kl, clipped) and,
    with a rollout correction, (..., weight, flag) as well."""
    f = torch.float64
    z = hidden.to(f) @ weight.to(f).T
    if bias is not None:
        z = z + bias.to(f)
    z = z / temperature
    logsm = torch.log_softmax(z, dim=-1)
    logp = logsm.gather(1, targets[:, None].long()).squeeze(1)
    old = logp.detach() if old_logprobs is None else old_logprobs.to(f)
    ratio = torch.exp(logp - old)
    a = advantages.to(f)
    if correct_ratio is not None:
        def w(x):
            return w_min + (w_max - w_min) / (1 + torch.exp(steepness * (x - midpoint)))
        rho = correct_ratio.to(f)
        a = torch.where(a > 0, a * w(rho), a * w(1 - rho))
    pg1 = -a * ratio
    pg2 = -a * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    pg = torch.max(pg1, pg2)
    corr = rollout_correction_weights(old, rollout_logprobs, seq_ids, rollout_correction, correction_cap,
                                      correction_low, rejection, rejection_low, rejection_high)
    if corr is not None:
        pg = corr[0] * pg
    if ref_logprobs is not None:
        d = ref_logprobs.to(f) - logp
        kl = torch.clamp(torch.exp(d) - d - 1, -10, 10)
    else:
        kl = torch.zeros_like(logp)
    ent = -(logsm.exp() * logsm).sum(-1)
    loss = (token_weights.to(f) * (pg + kl_coef * kl - entropy_coef * ent)).sum()
    out = (loss, logp.detach(), ent.detach(), kl.detach(), (pg2 > pg1).detach())
    return out if corr is None else out + corr


def rollout_correction_weights(lp_old, rollout, seq_ids, mode, cap, low, rejection="none", rej_low=0.5,
                               rej_high=2.0):
    """(weight, flag) per token from the definitions in docs/design.md ("Rollout correction"), in float64 and
    with a plain loop over sequences; None when neither a correction nor a rejection is on. The correction is
    TRL's: the ratio (per token, or a sequence's product) clamped to [low, cap] or kept inside and 0 outside,
    the lower bound only when given; the rejection multiplies by 1 inside [rej_low, rej_high], 0 outside."""
    if mode == "none" and rejection == "none":
        return None
    d = (lp_old.detach() - rollout.to(torch.float64)).tolist()
    ids = seq_ids.tolist() if seq_ids is not None else list(range(len(d)))
    members = {s: [i for i in range(len(d)) if ids[i] == s] for s in set(ids)}
    lo = 0.0 if low is None else low
    w, flag = [1.0] * len(d), [False] * len(d)
    for i in range(len(d)):
        if mode != "none":
            r = math.exp(d[i]) if mode.startswith("token") else math.exp(sum(d[j] for j in members[ids[i]]))
            inside = lo <= r <= cap
            if mode.endswith("truncate"):
                w[i] = min(max(r, lo), cap)
            else:
                w[i] = r if inside else 0.0
            flag[i] = not inside
        if rejection != "none":
            seq = [d[j] for j in members[ids[i]]]
            x = {"token": math.exp(d[i]), "sequence": math.exp(sum(seq)),
                 "geometric": math.exp(sum(seq) / len(seq))}[rejection]
            if not rej_low <= x <= rej_high:
                w[i], flag[i] = 0.0, True
    return torch.tensor(w, dtype=torch.float64), torch.tensor(flag)


def loop_rewards(outcomes, lengths, group_ids, *, alpha=0.05, correct_reward=1.0, incorrect_reward=-1.0,
                 format_error_reward=0.0, degenerate_reward=-2.0, min_short_len=0.0):
    base = {1: correct_reward, 0: incorrect_reward, -1: format_error_reward, -2: degenerate_reward}
    out = [float(base[o]) for o in outcomes]
    for g in set(group_ids):
        idx = [i for i in range(len(outcomes)) if group_ids[i] == g]
        lens = sorted(lengths[i] for i in idx)
        if len(idx) >= 3 and sum(lens[:3]) / 3 <= min_short_len:
            continue
        cor = [i for i in idx if outcomes[i] == 1]
        if not cor:
            continue
        mu = sum(lengths[i] for i in cor) / len(cor)
        if len(cor) < 2:
            sd = 1.0
        else:
            sd = math.sqrt(sum((lengths[i] - mu) ** 2 for i in cor) / (len(cor) - 1))
        for i in cor:
            out[i] *= math.exp(-alpha * (lengths[i] - mu) / (sd + 1e-6))
    return out


def loop_advantages(rewards, group_ids, *, reweight=True, w_min=0.4, w_max=1.5, midpoint=0.75, steepness=10.0,
                    eps=1e-6):
    adv, ratio = [0.0] * len(rewards), [0.0] * len(rewards)
    for g in set(group_ids):
        idx = [i for i in range(len(rewards)) if group_ids[i] == g]
        rs = [rewards[i] for i in idx]
        if len(rs) == 1:
            mean, sd = 0.0, 1.0
        else:
            mean = sum(rs) / len(rs)
            sd = math.sqrt(sum((r - mean) ** 2 for r in rs) / (len(rs) - 1))
        rho = sum(r > 0 for r in rs) / len(rs)
        for i in idx:
            a = (rewards[i] - mean) / (sd + eps)
            if reweight:
                x = rho if a > 0 else 1 - rho
                a *= w_min + (w_max - w_min) / (1 + math.exp(steepness * (x - midpoint)))
            adv[i], ratio[i] = a, rho
    return adv, ratio
