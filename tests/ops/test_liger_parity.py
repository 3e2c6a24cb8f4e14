"""The loss head against a peer: Liger-Kernel's chunked LigerFusedLinearGRPOLoss (token-mean 'dapo')."""

import pytest
import torch

from lead_fast.ops import grpo_loss

liger = pytest.importorskip("liger_kernel.chunked_loss")


@pytest.mark.parametrize("with_kl", [False, True])
@pytest.mark.parametrize("with_old", [False, True])
def test_matches_liger_fused_linear_grpo(with_kl, with_old):
    torch.manual_seed(0)
    B, T, H, V = 3, 7, 16, 301
    x = torch.randn(B, T, H, dtype=torch.float64)
    w = torch.randn(V, H, dtype=torch.float64) / 4
    b = torch.randn(V, dtype=torch.float64)
    ids = torch.randint(0, V, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 5:] = 0
    mask[2, 2:] = 0
    adv = torch.randn(B, dtype=torch.float64)
    with torch.no_grad():
        lp = torch.log_softmax((x @ w.T + b) / 0.9, -1).gather(-1, ids[..., None]).squeeze(-1)
    old = (lp + 0.3 * torch.randn(B, T, dtype=torch.float64)) if with_old else None
    ref = (lp + 0.2 * torch.randn(B, T, dtype=torch.float64)) if with_kl else None
    beta = 0.1 if with_kl else 0.0

    peer = liger.LigerFusedLinearGRPOLoss(beta=beta, compiled=False, use_ref_model=with_kl, chunk_size=2,
                                          epsilon_low=0.2, epsilon_high=0.28, loss_type="dapo", temperature=0.9)
    xp, wp, bp = (t.clone().requires_grad_(True) for t in (x, w, b))
    out = peer(xp, wp, ids, mask, adv, bias=bp, ref_per_token_logps=ref, old_per_token_logps=old)
    peer_loss = out[0] if isinstance(out, tuple) else out
    peer_loss.backward()

    # lead_fast takes packed response tokens with token_weights = 1 / (tokens in the mini-batch).
    keep = mask.bool().reshape(-1)
    n_tok = int(keep.sum())
    xs, ws, bs = (t.clone().requires_grad_(True) for t in (x, w, b))
    ours = grpo_loss(xs.reshape(-1, H)[keep], ws, ids.reshape(-1)[keep],
                     adv[:, None].expand(B, T).reshape(-1)[keep], torch.full((n_tok,), 1.0 / n_tok),
                     old_logprobs=None if old is None else old.reshape(-1)[keep],
                     ref_logprobs=None if ref is None else ref.reshape(-1)[keep],
                     bias=bs, kl_coef=beta, clip_low=0.2, clip_high=0.28, temperature=0.9, backend="torch")
    ours.loss.backward()
    torch.testing.assert_close(ours.loss, peer_loss.to(ours.loss.dtype), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(xs.grad, xp.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ws.grad, wp.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(bs.grad, bp.grad, rtol=1e-5, atol=1e-7)
