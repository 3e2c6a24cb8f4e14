"""The loss head's row kernel in Triton: one program per token row of a ``(C, V)`` logits chunk.

Pass 1 streams the row once: online max / sum-exp and sum(exp * z) in float32, giving the log-sum-exp,
the entropy and the target log-prob. The per-token scalars (ratio, clipping, KL, the difficulty weight
``w(rho)`` / ``w(1 - rho)``, the loss and ``d loss / d logp``) are a few flops. Pass 2 (only when
gradients are wanted) streams the row again and overwrites it in place with ``d loss / d raw_logits``.
So a row costs two reads and one write with gradients, one read without.

``V`` is a compile-time constant (fixed per model): the Triton 3.6 interpreter rejects loop bounds that
are runtime integers. The number of rows is the launch grid, so any ``N`` reuses one compiled kernel.
Plain-torch reference: ``rows_torch.grpo_rows`` (same contract).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _grpo_rows_kernel(
    buf_ptr,        # (C, V) raw logits (h @ W.T + b) of this chunk; overwritten with d loss / d logits if WRITE_GRAD
    stride_buf,     # elements between consecutive rows of buf
    tgt_ptr,        # (C,) int64 target token ids
    adv_ptr,        # (C,) float32 advantages                       (read if COMPUTE_LOSS)
    tw_ptr,         # (C,) float32 token weights                    (read if COMPUTE_LOSS)
    old_ptr,        # (C,) float32 old-policy log-probs             (read if HAS_OLD)
    ref_ptr,        # (C,) float32 reference log-probs              (read if HAS_REF)
    rho_ptr,        # (C,) float32 group correct ratio              (read if HAS_RHO)
    logp_ptr,       # (C,) float32 out: log-prob of the target
    ent_ptr,        # (C,) float32 out: entropy of softmax(z)
    kl_ptr,         # (C,) float32 out: clamped k3 KL               (written if COMPUTE_LOSS)
    clip_ptr,       # (C,) int8 out: 1 where the clamped branch is active (written if COMPUTE_LOSS)
    loss_ptr,       # (C,) float32 out: token_weight * per-token loss (written if COMPUTE_LOSS)
    inv_temp, clip_low, clip_high, kl_coef, ent_coef, w_min, w_max, midpoint, steepness,
    V: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_OLD: tl.constexpr,
    HAS_REF: tl.constexpr,
    HAS_RHO: tl.constexpr,
    COMPUTE_LOSS: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = buf_ptr + row * stride_buf
    offs = tl.arange(0, BLOCK)

    # Pass 1: per-lane online max m, s = sum exp(z - m) and t = sum exp(z - m) * (z - m); lanes are
    # combined once at the end. Keeping z - m (not z) in t avoids cancellation in lse - E[z] when
    # |z| is large (all logits near -1000, say).
    m_vec = tl.full([BLOCK], float("-inf"), tl.float32)
    s_vec = tl.zeros([BLOCK], tl.float32)
    t_vec = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        idx = start + offs
        mask = idx < V
        z = tl.load(row_ptr + idx, mask=mask, other=float("-inf")).to(tl.float32) * inv_temp
        m_new = tl.maximum(m_vec, z)
        seen = m_vec != float("-inf")  # lanes with a running sum to rescale (others hold zeros)
        delta = tl.where(seen, m_vec - m_new, 0.0)
        scale = tl.where(seen, tl.exp(delta), 0.0)
        zs = tl.where(mask, z - m_new, 0.0)
        e = tl.where(mask, tl.exp(zs), 0.0)
        t_vec = scale * (t_vec + s_vec * delta) + e * zs
        s_vec = s_vec * scale + e
        m_vec = m_new
    m = tl.max(m_vec, 0)
    seen = m_vec != float("-inf")
    delta = tl.where(seen, m_vec - m, 0.0)
    lane_scale = tl.where(seen, tl.exp(delta), 0.0)
    s = tl.sum(s_vec * lane_scale, 0)
    t = tl.sum(lane_scale * (t_vec + s_vec * delta), 0)
    lse = m + tl.log(s)
    pzs = t / s                     # E_p[z - m]
    entropy = tl.log(s) - pzs       # lse - E_p[z]

    tgt = tl.load(tgt_ptr + row)
    z_t = tl.load(row_ptr + tgt).to(tl.float32) * inv_temp
    logp = z_t - lse
    tl.store(logp_ptr + row, logp)
    tl.store(ent_ptr + row, entropy)

    if COMPUTE_LOSS:
        a = tl.load(adv_ptr + row)
        tw = tl.load(tw_ptr + row)
        if HAS_RHO:
            rho = tl.load(rho_ptr + row)
            x = tl.where(a > 0, rho, 1.0 - rho)
            a = a * (w_min + (w_max - w_min) / (1.0 + tl.exp(steepness * (x - midpoint))))
        if HAS_OLD:
            ratio = tl.exp(logp - tl.load(old_ptr + row))
        else:
            ratio = logp * 0.0 + 1.0
        clamped = tl.minimum(tl.maximum(ratio, 1.0 - clip_low), 1.0 + clip_high)
        pg1 = -a * ratio
        pg2 = -a * clamped
        is_clipped = pg2 > pg1
        pg = tl.maximum(pg1, pg2)
        d_pg = tl.where(is_clipped, 0.0, -a * ratio)
        if HAS_REF:
            d = tl.load(ref_ptr + row) - logp
            kl_raw = tl.exp(d) - d - 1.0
            kl = tl.minimum(tl.maximum(kl_raw, -10.0), 10.0)
            d_kl = tl.where(kl_raw <= 10.0, 1.0 - tl.exp(d), 0.0)
        else:
            kl = logp * 0.0
            d_kl = logp * 0.0
        tl.store(kl_ptr + row, kl)
        tl.store(clip_ptr + row, is_clipped.to(tl.int8))
        tl.store(loss_ptr + row, tw * (pg + kl_coef * kl - ent_coef * entropy))

        if WRITE_GRAD:
            coef = tw * (d_pg + kl_coef * d_kl)      # d loss / d logp
            ew = tw * ent_coef                       # d loss / d (-entropy)
            # Pass 2: d/dz = coef * (onehot - p) + ew * p * (z - E_p[z]); times 1/T for the raw logits.
            for start in range(0, V, BLOCK):
                idx = start + offs
                mask = idx < V
                zs = tl.load(row_ptr + idx, mask=mask, other=float("-inf")).to(tl.float32) * inv_temp - m
                zs = tl.where(mask, zs, 0.0)  # keep the ragged tail finite (it is never stored)
                p = tl.exp(zs - (lse - m))
                g = p * (ew * (zs - pzs) - coef)
                g = tl.where(idx == tgt, g + coef, g)
                tl.store(row_ptr + idx, (g * inv_temp).to(buf_ptr.dtype.element_ty), mask=mask)


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def pick_block(V: int) -> tuple[int, int]:
    """(BLOCK, num_warps). Small blocks under the interpreter so tests cover several blocks and a ragged tail."""
    if _interpret():
        return 128, 4
    block = min(4096, triton.next_power_of_2(V))
    return block, (16 if block >= 4096 else 8 if block >= 2048 else 4)


def grpo_rows(buf, targets, adv, tw, old, ref, rho, p, *, write_grad: bool, compute_loss: bool):
    """Same contract as ``rows_torch.grpo_rows``: ``buf`` ``(C, V)`` raw logits, overwritten with the gradient."""
    C, V = buf.shape
    if buf.stride(1) != 1:
        raise ValueError("the logits buffer must be contiguous along the vocabulary")
    dev = buf.device
    logp = torch.empty(C, dtype=torch.float32, device=dev)
    ent = torch.empty(C, dtype=torch.float32, device=dev)
    if compute_loss:
        kl = torch.empty(C, dtype=torch.float32, device=dev)
        clipped = torch.empty(C, dtype=torch.int8, device=dev)
        loss = torch.empty(C, dtype=torch.float32, device=dev)
    else:
        kl, clipped, loss = logp, logp, logp  # never written: COMPUTE_LOSS is off
    if C == 0:
        out = dict(logp=logp, entropy=ent)
        if compute_loss:
            out.update(kl=kl, clipped=clipped.bool(), loss=loss)
        return out
    dummy = logp  # stands in for absent per-token inputs; the kernel never reads it
    block, warps = pick_block(V)
    _grpo_rows_kernel[(C,)](
        buf, buf.stride(0), targets.contiguous(),
        dummy if adv is None else adv, dummy if tw is None else tw,
        dummy if old is None else old, dummy if ref is None else ref, dummy if rho is None else rho,
        logp, ent, kl, clipped, loss,
        1.0 / p.temperature, p.clip_low, p.clip_high, p.kl_coef, p.entropy_coef,
        p.w_min, p.w_max, p.midpoint, p.steepness,
        V=V, BLOCK=block, HAS_OLD=old is not None, HAS_REF=ref is not None, HAS_RHO=rho is not None,
        COMPUTE_LOSS=compute_loss, WRITE_GRAD=compute_loss and write_grad, num_warps=warps,
    )
    out = dict(logp=logp, entropy=ent)
    if compute_loss:
        out.update(kl=kl, clipped=clipped.bool(), loss=loss)
    return out
