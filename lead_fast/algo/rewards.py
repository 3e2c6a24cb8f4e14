"""GRPO-LEAD rewards and advantages (arXiv 2504.09696), vectorized over responses with segment ops.

Shapes: every per-response tensor is ``(R,)``; ``group_ids`` are arbitrary integers (members of a group
need not be adjacent). Groups are mapped to ``0..G-1`` with ``torch.unique`` and reduced with
``scatter_add`` / ``scatter_reduce``, so there is no Python loop over responses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lead_fast.algo.grading import CORRECT, DEGENERATE, NO_ANSWER, WRONG
from lead_fast.choices import LossAgg, options


def _as_1d(name: str, x, dtype=None) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one value per response), got shape {tuple(t.shape)}")
    return t.to(dtype) if dtype is not None else t


def _segments(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Dense group index ``(R,)`` in ``0..G-1`` and ``G``."""
    _, inv = torch.unique(group_ids, return_inverse=True)
    return inv, int(inv.max().item()) + 1 if inv.numel() else 0


def _seg_sum(x: torch.Tensor, seg: torch.Tensor, G: int) -> torch.Tensor:
    return torch.zeros(G, dtype=x.dtype, device=x.device).scatter_add_(0, seg, x)


def _seg_mean_std(x: torch.Tensor, seg: torch.Tensor, G: int, mask: torch.Tensor | None = None):
    """Per-group mean and unbiased std of ``x`` over members where ``mask``; also the member count."""
    w = torch.ones_like(x) if mask is None else mask.to(x.dtype)
    cnt = _seg_sum(w, seg, G)
    mean = _seg_sum(x * w, seg, G) / cnt.clamp_min(1)
    dev = (x - mean[seg]) * w
    var = _seg_sum(dev * dev, seg, G) / (cnt - 1).clamp_min(1)
    return mean, var.sqrt(), cnt


def lead_rewards(outcomes, lengths, group_ids, *, alpha: float = 0.05, correct_reward: float = 1.0,
                 incorrect_reward: float = -1.0, format_error_reward: float = 0.0,
                 degenerate_reward: float = -2.0, min_short_len: float = 0.0) -> torch.Tensor:
    """Outcome rewards with GRPO-LEAD's length regularization (``length_regularized``).

    outcomes: ``(R,)`` codes 1 / 0 / -1 / -2; lengths: ``(R,)`` response lengths in tokens;
    group_ids: ``(R,)`` the prompt each response answers. Returns float32 ``(R,)``.
    """
    out = _as_1d("outcomes", outcomes, torch.long)
    bad = ~torch.isin(out, torch.tensor([CORRECT, WRONG, NO_ANSWER, DEGENERATE]))
    if bad.any():
        raise ValueError(f"outcomes must be 1, 0, -1 or -2; got {out[bad][:5].tolist()}")
    base = torch.full(out.shape, float(incorrect_reward), dtype=torch.float64)
    base = torch.where(out == CORRECT, float(correct_reward), base)
    base = torch.where(out == NO_ANSWER, float(format_error_reward), base)
    base = torch.where(out == DEGENERATE, float(degenerate_reward), base)
    return length_regularized(base, lengths, group_ids, alpha=alpha, min_short_len=min_short_len)


def length_regularized(rewards, lengths, group_ids, *, alpha: float = 0.05, min_short_len: float = 0.0) -> torch.Tensor:
    """GRPO-LEAD's length regularization of any rewards: among a group's responses with reward > 0 (its
    correct ones, with the math reward), each reward is scaled by ``exp(-alpha * (L - mu) / (sigma + 1e-6))``
    where ``mu``, ``sigma`` (unbiased; 1 when fewer than 2 are > 0) are their lengths' mean and std.

    rewards: ``(R,)``, NaN for an unscorable response (left NaN, never shaped); lengths: ``(R,)`` tokens;
    group_ids: ``(R,)``. A group whose 3 shortest responses (any reward) average ``<= min_short_len`` is left
    unshaped; groups of fewer than 3 responses are always shaped. Returns float32 ``(R,)``.
    """
    base = _as_1d("rewards", rewards, torch.float64)
    L = _as_1d("lengths", lengths, torch.float64)
    gid = _as_1d("group_ids", group_ids)
    if not (base.numel() == L.numel() == gid.numel()):
        raise ValueError(f"rewards (outcomes), lengths and group_ids must have the same length, got "
                         f"{base.numel()}, {L.numel()}, {gid.numel()}")
    L = L.to(base.device)
    if base.numel() == 0:
        return base.float()

    seg, G = _segments(gid.to(base.device))
    positive = base > 0          # NaN: False
    mu, sigma, n_pos = _seg_mean_std(L, seg, G, positive)
    sigma = torch.where(n_pos < 2, torch.ones_like(sigma), sigma)
    scale = torch.exp(-alpha * (L - mu[seg]) / (sigma[seg] + 1e-6))

    # Mean of the 3 shortest lengths per group: sort by (group, length), rank within the group.
    size = torch.bincount(seg, minlength=G)
    order = torch.argsort(seg * (L.max() + 1) + L, stable=True) if L.numel() else seg
    seg_sorted = seg[order]
    first = torch.cumsum(size, 0) - size
    rank = torch.arange(seg.numel(), device=seg.device) - first[seg_sorted]
    top3 = (rank < 3).to(L.dtype)
    mean3 = _seg_sum(L[order] * top3, seg_sorted, G) / _seg_sum(top3, seg_sorted, G)
    shaped = (size < 3) | (mean3 > min_short_len)

    reward = torch.where(positive & shaped[seg], base * scale, base)
    return reward.float()


def difficulty_weight(x: torch.Tensor, *, w_min: float = 0.4, w_max: float = 1.5, midpoint: float = 0.75,
                      steepness: float = 10.0) -> torch.Tensor:
    """``w(x) = w_min + (w_max - w_min) / (1 + exp(steepness * (x - midpoint)))``: high for hard prompts."""
    return w_min + (w_max - w_min) * torch.sigmoid(-steepness * (x - midpoint))


def lead_advantages(rewards, group_ids, *, reweight: bool = True, w_min: float = 0.4, w_max: float = 1.5,
                    midpoint: float = 0.75, steepness: float = 10.0, eps: float = 1e-6, scale: bool = True):
    """Group-normalized advantages with difficulty-aware reweighting.

    ``a = (r - mean_g) / (std_g + eps)`` (unbiased std; a group of one has mean 0, std 1; ``scale=False``:
    ``a = r - mean_g``, Dr. GRPO). A NaN reward (unscorable: every reward function gave None) is left out of
    its group's mean, std and correct ratio, and gets advantage 0 (TRL's rule). ``rho_g`` is the fraction of
    the group's scored rewards that are > 0; ``a *= w(rho)`` where ``a > 0``, else ``a *= w(1 - rho)``.
    Returns ``(advantages (R,), correct_ratio (R,))``, both float32; ``correct_ratio`` is ``rho`` of each
    response's group (what ``grpo_loss(correct_ratio=...)`` takes to apply the weight in the kernel).
    """
    r = _as_1d("rewards", rewards, torch.float64)
    gid = _as_1d("group_ids", group_ids)
    if r.numel() != gid.numel():
        raise ValueError(f"rewards and group_ids must have the same length, got {r.numel()} and {gid.numel()}")
    if r.numel() == 0:
        return r.float(), r.float()
    if torch.isinf(r).any():
        raise ValueError("rewards contain inf")
    scored = ~torch.isnan(r)
    r0 = torch.where(scored, r, torch.zeros_like(r))
    seg, G = _segments(gid.to(r.device))
    mean, std, cnt = _seg_mean_std(r0, seg, G, scored)
    single = cnt < 2
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    adv = (r0 - mean[seg]) / (std[seg] + eps) if scale else r0 - mean[seg]
    adv = torch.where(scored, adv, torch.zeros_like(adv))
    rho = (_seg_sum((r0 > 0).to(r.dtype), seg, G) / cnt.clamp_min(1))[seg]
    if reweight:
        kw = dict(w_min=w_min, w_max=w_max, midpoint=midpoint, steepness=steepness)
        adv = adv * torch.where(adv > 0, difficulty_weight(rho, **kw), difficulty_weight(1 - rho, **kw))
    return adv.float(), rho.float()


@dataclass(frozen=True)
class GroupFilter:
    """Which responses the update keeps, and why the others were dropped; each ``(R,)`` bool, per response's
    group. A dropped group is counted under one reason: ``all_equal`` first, then ``no_correct``."""

    keep: torch.Tensor
    all_equal: torch.Tensor      # dropped: every reward of the group is equal (zero advantage)
    no_correct: torch.Tensor     # dropped: no reward > 0 (and not all equal)


def select_groups(rewards, group_ids, *, drop_no_signal: bool = True, drop_no_correct: bool = True,
                  atol: float = 1e-6) -> GroupFilter:
    """The group filter: what the update keeps and why the rest is dropped.

    A group is dropped when all its rewards are equal (zero advantage), or, with ``drop_no_correct``
    (GRPO-LEAD's official run), when none of its rewards is > 0: on a problem the model never solves, the
    only signal left would favour the least-penalized failure (an unanswered response over a wrong one).
    ``drop_no_signal=False`` keeps every group (nothing is dropped, for either reason).
    """
    all_equal, no_correct = group_drop_reasons(rewards, group_ids, atol=atol)
    no_correct = no_correct & ~all_equal & drop_no_correct
    if not drop_no_signal:
        nothing = torch.zeros_like(all_equal)
        return GroupFilter(keep=~nothing, all_equal=nothing, no_correct=nothing)
    return GroupFilter(keep=~(all_equal | no_correct), all_equal=all_equal, no_correct=no_correct)


def groups_without_signal(rewards, group_ids, *, drop_no_correct: bool = True, atol: float = 1e-6) -> torch.Tensor:
    """``(R,)`` bool: True for responses whose group is dropped from the update (``select_groups``)."""
    return ~select_groups(rewards, group_ids, drop_no_correct=drop_no_correct, atol=atol).keep


def group_drop_reasons(rewards, group_ids, *, atol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """``(all_equal, no_correct)``, each ``(R,)`` bool per response's group: all rewards equal (within
    ``atol``); no reward > 0. NaN rewards (unscorable) are left out (a group of them only: all equal)."""
    r = _as_1d("rewards", rewards, torch.float64)
    gid = _as_1d("group_ids", group_ids)
    if r.numel() != gid.numel():
        raise ValueError(f"rewards and group_ids must have the same length, got {r.numel()} and {gid.numel()}")
    if r.numel() == 0:
        empty = torch.zeros(0, dtype=torch.bool)
        return empty, empty
    seg, G = _segments(gid.to(r.device))
    nan = torch.isnan(r)       # unscorable: neither the highest nor the lowest reward of its group
    hi = torch.full((G,), -torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(
        0, seg, torch.where(nan, -torch.inf, r), "amax")
    lo = torch.full((G,), torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(
        0, seg, torch.where(nan, torch.inf, r), "amin")
    return ((hi - lo) <= atol)[seg], (hi <= 0)[seg]


LOSS_AGGS = options(LossAgg)


def loss_token_weights(lengths, *, agg: str = "token_mean", num_sequences: int | None = None) -> torch.Tensor:
    """The weight each token of sequence ``i`` carries in one mini-batch's loss, ``(B,)`` float64.

    lengths: ``(B,)`` response lengths in tokens (every sequence of the mini-batch, across ranks).
    ``token_mean``: ``1 / sum(L)`` (every token counts the same: long responses weigh more).
    ``seq_mean_token_mean``: ``1 / (B' * L_i)``, the mean over sequences of each one's token mean, with
    ``B' = num_sequences`` when given (GRPO-LEAD's official run divides by the sampled count, before groups
    are dropped, so a step shrinks when many groups are dropped) else ``B``.
    """
    L = _as_1d("lengths", lengths, torch.float64)
    if agg not in LOSS_AGGS:
        raise ValueError(f"agg must be one of {', '.join(LOSS_AGGS)}, got {agg!r}")
    if L.numel() == 0:
        return L
    if (L < 1).any():
        raise ValueError(f"lengths must be >= 1, got {L[L < 1][:5].tolist()}")
    if agg == "token_mean":
        return torch.full_like(L, 1.0 / float(L.sum()))
    B = L.numel() if num_sequences is None else num_sequences
    if B < L.numel():
        raise ValueError(f"num_sequences={B} is smaller than the {L.numel()} sequences given")
    return 1.0 / (B * L)
