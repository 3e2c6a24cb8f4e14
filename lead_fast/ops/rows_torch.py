"""The loss head's per-row math in plain torch: the reference the Triton row kernel must match.

One call handles one chunk of ``C`` token rows. It reads the raw logits ``h @ W.T + b`` from ``buf``
(``(C, V)``, any float dtype), computes everything in float32 (float64 for float64 inputs), and, when asked, overwrites ``buf`` with
``d loss / d raw_logits`` (the gradient the two backward GEMMs need). Same contract as
``rows_triton.grpo_rows``.
"""

from __future__ import annotations

import torch

from lead_fast.algo.rewards import difficulty_weight


def difficulty_scale(adv: torch.Tensor, rho: torch.Tensor, p) -> torch.Tensor:
    """``w(rho)`` where ``adv > 0`` else ``w(1 - rho)`` (``w`` is ``lead_fast.algo.difficulty_weight``)."""
    return difficulty_weight(torch.where(adv > 0, rho, 1.0 - rho), w_min=p.w_min, w_max=p.w_max,
                             midpoint=p.midpoint, steepness=p.steepness)


def correction_weights(logp, old, rollout, given, p):
    """The rollout correction's per-token weight on the policy-gradient term, and which tokens it truncated
    or masked: ``(weight, flag)``, or ``(None, None)`` without one (docs/design.md, "Rollout correction").
    A token correction alone: the ratio ``exp(lp_old - lp_rollout)``, with ``lp_old`` the old-policy log-prob
    when there is one, else the head's own (on-policy), clamped to ``[correction_low, correction_cap]``
    (truncate) or kept inside those bounds and 0 outside (mask), the lower bound only when set. Sequence
    modes and rejections: ``given`` (the head computed them per response before the loss), flags the head's."""
    if p.weights_before_loss:
        return given, None
    if p.token_correction:
        ratio = torch.exp((logp if old is None else old) - rollout)
        low = p.correction_low or 0.0           # unset: no lower bound (a ratio is > 0)
        if p.correction == "token_truncate":
            return ratio.clamp(min=low, max=p.correction_cap), (ratio > p.correction_cap) | (ratio < low)
        inside = (ratio >= low) & (ratio <= p.correction_cap)
        return torch.where(inside, ratio, 0.0), ~inside
    return None, None


def policy_terms(logp, adv, tw, old, ref, rho, p, isw=None):
    """Per-token scalars shared by both backends, all ``(C,)`` float32. ``isw``: the rollout correction's
    weight on the policy-gradient term (None: 1).

    Returns ``(loss_tok, coef, kl, clipped)`` with ``coef = d loss_tok / d logp`` (before the entropy term).
    """
    a = adv if rho is None else adv * difficulty_scale(adv, rho, p)
    ratio = torch.ones_like(logp) if old is None else torch.exp(logp - old)
    clamped = ratio.clamp(1.0 - p.clip_low, 1.0 + p.clip_high)
    pg1, pg2 = -a * ratio, -a * clamped
    clipped = pg2 > pg1  # the clamped branch is active: its gradient is zero
    pg = torch.maximum(pg1, pg2)
    d_pg = torch.where(clipped, torch.zeros_like(a), -a * ratio)
    if isw is not None:      # a constant per token: it scales the term and its gradient alike
        pg, d_pg = isw * pg, isw * d_pg
    if ref is not None:
        d = ref - logp
        kl_raw = torch.exp(d) - d - 1.0
        kl = kl_raw.clamp(-10.0, 10.0)
        d_kl = torch.where(kl_raw <= 10.0, 1.0 - torch.exp(d), torch.zeros_like(d))
    else:
        kl = d_kl = torch.zeros_like(logp)
    loss_core = pg + p.kl_coef * kl
    coef = tw * (d_pg + p.kl_coef * d_kl)
    return tw * loss_core, coef, kl, clipped


def grpo_rows(buf, tok, p, *, write_grad: bool, compute_loss: bool):
    """Process one chunk of rows. ``buf``: ``(C, V)`` raw logits, overwritten (with the gradient if asked;
    otherwise left holding scratch values); ``tok``: the chunk's ``TokenInputs``; ``p``: ``LossParams``.

    Returns ``dict(logp, entropy, kl, clipped, loss)`` of ``(C,)`` tensors (``kl``/``clipped``/``loss``
    only when ``compute_loss``).

    Memory traffic is what this costs on CPU (the GEMMs around it are the rest), so it works in place: the
    tempered, shifted logits live in ``buf`` itself when it already has the compute dtype, the
    probabilities are the one ``(C, V)`` temporary, ``E_p[z]`` is a batched dot (no product tensor), and
    the gradient is written back into ``buf`` with the ``1/T`` folded into its per-row scalars.
    """
    inv_t = 1.0 / p.temperature
    ftype = torch.promote_types(buf.dtype, torch.float32)    # float32, or float64 for float64 inputs
    z = buf if buf.dtype == ftype else buf.to(ftype)          # (C, V), modified in place below
    if inv_t != 1.0:
        z.mul_(inv_t)
    z.sub_(z.amax(-1, keepdim=True))                          # shift: no cancellation in lse - E[z]
    adv, tw, old, ref, rho, rollout, given = (None if x is None else x.to(ftype) for x in (
        tok.advantages, tok.token_weights, tok.old_logprobs, tok.ref_logprobs, tok.correct_ratio,
        tok.rollout_logprobs, tok.is_weights))
    targets = tok.targets
    prob = torch.exp(z)                                       # (C, V): the one temporary
    s = prob.sum(-1)
    lse = torch.log(s)                                        # (C,) of the shifted z
    prob.div_(s[:, None])
    pz = torch.bmm(prob.unsqueeze(1), z.unsqueeze(2)).view(-1)   # (C,) E_p[z] (of the shifted z)
    entropy = lse - pz
    logp = z.gather(1, targets[:, None]).squeeze(1) - lse
    out = dict(logp=logp, entropy=entropy)
    if not compute_loss:
        return out
    isw, flag = correction_weights(logp, old, rollout, given, p)
    loss_tok, coef, kl, clipped = policy_terms(logp, adv, tw, old, ref, rho, p, isw)
    loss_tok = loss_tok - tw * p.entropy_coef * entropy
    out.update(kl=kl, clipped=clipped, loss=loss_tok)
    if isw is not None:
        out["is_weight"] = isw
    if flag is not None:
        out["is_flag"] = flag
    if write_grad:
        # d/dz [coef * logp - ent_w * H] = coef * (onehot - p) + ent_w * p * (z - E_p[z]); d/d raw = that / T
        c = coef * inv_t
        if p.entropy_coef != 0.0:
            e = tw * p.entropy_coef * inv_t
            z.mul_(e[:, None]).add_((-c - e * pz)[:, None]).mul_(prob)   # p * (e z - c - e E_p[z])
        else:
            torch.mul(prob, (-c)[:, None], out=z)
        z.scatter_add_(1, targets[:, None], c[:, None])
        if z is not buf:
            buf.copy_(z)
    return out
