"""Inputs, the comparison against the float64 reference, and the option cases shared by the CPU and GPU
loss-head tests."""

import torch

from lead_fast.ops import grpo_loss
from tests.helpers.reference import naive_grpo_loss

BACKENDS = ["torch", "triton"]


def make_inputs(N, H, V, *, seed=0, dtype=torch.float64, bias=True, old=True, ref=True, rho=True,
            zero_weights=False, neg_bias=False, rollout=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) / H**0.5
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    if neg_bias:
        b = torch.full((V,), -1000.0, dtype=torch.float64) + torch.randn(V, generator=g, dtype=torch.float64)
    targets = torch.randint(0, V, (N,), generator=g)
    adv = torch.randn(N, generator=g)
    tw = torch.rand(N, generator=g) / N
    if zero_weights:
        tw[::2] = 0.0  # masked tokens
    with torch.no_grad():
        z = hidden @ weight.T + (b if b is not None else 0)
        lp = torch.log_softmax(z, -1).gather(1, targets[:, None]).squeeze(1).float()
    kw = {}
    if old:  # ratios spread across both clip edges
        kw["old_logprobs"] = lp + 0.4 * torch.randn(N, generator=g)
    if ref:
        kw["ref_logprobs"] = lp + 0.5 * torch.randn(N, generator=g)
    if rho:
        kw["correct_ratio"] = torch.rand(N, generator=g)
    if rollout:  # the engine's log-probs, off by enough that ratios fall on both sides of [0.5, 2]
        kw["rollout_logprobs"] = lp + 0.6 * torch.randn(N, generator=g)
        kw["seq_ids"] = torch.sort(torch.randint(0, max(1, N // 4), (N,), generator=g)).values   # ragged responses
    to = dict(dtype=dtype)
    return (hidden.to(**to), weight.to(**to), None if b is None else b.to(**to), targets, adv, tw, kw)


def run_loss(fn, hidden, weight, bias, targets, adv, tw, kw, **opts):
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    b = None if bias is None else bias.clone().requires_grad_(True)
    out = fn(h, w, targets, adv, tw, bias=b, **kw, **opts)
    loss = out[0] if isinstance(out, tuple) else out.loss
    loss.backward()
    return out, h.grad, w.grad, None if b is None else b.grad


def compare(backend, inp, tol, **opts):
    hidden, weight, bias, targets, adv, tw, kw = inp
    chunk = opts.pop("chunk_size", None)
    ref_out, rgh, rgw, rgb = run_loss(naive_grpo_loss, hidden.double(), weight.double(),
                                  None if bias is None else bias.double(), targets, adv, tw, kw, **opts)
    out, gh, gw, gb = run_loss(grpo_loss, hidden, weight, bias, targets, adv, tw, kw, backend=backend,
                           chunk_size=chunk, **opts)
    rloss, rlogp, rent, rkl, rclip = ref_out[:5]
    close = dict(rtol=tol, atol=tol)
    if opts.get("rollout_correction", "none") != "none" or opts.get("rejection", "none") != "none":
        rw, rflag = ref_out[5:]
        torch.testing.assert_close(out.is_weight.double(), rw, **close)
        assert torch.equal(out.is_flag, rflag)
    else:
        assert out.is_weight is None and out.is_flag is None
    torch.testing.assert_close(out.loss.double(), rloss, **close)
    torch.testing.assert_close(out.logprobs.double(), rlogp, **close)
    torch.testing.assert_close(out.entropy.double(), rent, **close)
    torch.testing.assert_close(out.kl.double(), rkl, **close)
    assert out.clipped.dtype == torch.bool
    # a token whose ratio sits within rounding of a clip edge may flip; none do on these seeds
    assert torch.equal(out.clipped, rclip)
    torch.testing.assert_close(gh.double(), rgh, **close)
    torch.testing.assert_close(gw.double(), rgw, **close)
    if bias is not None:
        torch.testing.assert_close(gb.double(), rgb, **close)
    return out


CASES = [
    dict(opts=dict(), inp=dict(old=False, ref=False, rho=False)),          # on-policy: ratio = 1
    dict(opts=dict(), inp=dict(old=True, ref=False, rho=False)),
    dict(opts=dict(kl_coef=0.5), inp=dict(old=False, ref=True, rho=False)),
    dict(opts=dict(entropy_coef=0.3), inp=dict(old=True, ref=False, rho=True)),
    dict(opts=dict(temperature=0.7, kl_coef=0.05, entropy_coef=0.001), inp=dict()),
    dict(opts=dict(temperature=1.3, clip_low=0.1, clip_high=0.28), inp=dict(bias=False)),
    dict(opts=dict(w_min=0.1, w_max=2.0, midpoint=0.5, steepness=3.0), inp=dict(rho=True)),
    dict(opts=dict(kl_coef=0.1, entropy_coef=0.01), inp=dict(zero_weights=True)),
    # all logits near -1000: float32 logits themselves carry ~1e-4 absolute error there
    dict(opts=dict(kl_coef=0.1, entropy_coef=0.01), inp=dict(neg_bias=True), tol32=5e-4),
    # the rollout correction, every mode, on-policy (the head's own log-prob) and with an old-policy pass
    *[dict(opts=dict(rollout_correction=mode, kl_coef=0.1, entropy_coef=0.01), inp=dict(rollout=True, old=old))
      for mode in ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask") for old in (False, True)],
    dict(opts=dict(rollout_correction="token_mask", correction_low=0.8, correction_cap=1.5), inp=dict(rollout=True)),
    dict(opts=dict(rollout_correction="token_truncate", correction_low=0.7, correction_cap=1.5), inp=dict(rollout=True)),
    dict(opts=dict(rollout_correction="sequence_truncate", correction_cap=1.2), inp=dict(rollout=True, old=False)),
    dict(opts=dict(rollout_correction="sequence_mask", correction_low=0.3, correction_cap=3.0),
         inp=dict(rollout=True, old=False)),
    # the rejections, alone and on top of a correction (the weights are then computed before the loss)
    # (the geometric mean varies little between responses: its bounds are tight enough to reject some)
    *[dict(opts=dict(rejection=rej, rejection_low=low, rejection_high=high, kl_coef=0.1), inp=dict(rollout=True))
      for rej, low, high in (("token", 0.6, 1.8), ("sequence", 0.6, 1.8), ("geometric", 0.9, 1.1))],
    dict(opts=dict(rollout_correction="token_truncate", rejection="geometric", rejection_low=0.9, rejection_high=1.1),
         inp=dict(rollout=True, old=False)),
    dict(opts=dict(rollout_correction="sequence_mask", correction_cap=3.0, rejection="token", rejection_low=0.4),
         inp=dict(rollout=True)),
    dict(opts=dict(), inp=dict(rollout=True)),       # engine log-probs given, correction off: no weight
]
