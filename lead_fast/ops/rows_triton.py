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

from lead_fast.ops.common import triton_interpret


@triton.jit
def _online_update(z, mask, m_vec, s_vec, t_vec, c, MASKED: tl.constexpr):
    """Pass 1 over one (BLOCK // 8, 8) tile ``z`` of raw logits: per tile row, the running max ``m``,
    ``s = sum 2^a`` and ``t = sum 2^a * a`` with ``a = (z - m) * c``, rescaled when ``m`` grows."""
    m_new = tl.maximum(m_vec, tl.max(z, 1))
    d = (m_vec - m_new) * c                   # <= 0
    a = (z - m_new[:, None]) * c
    e = tl.exp2(a)
    if MASKED:
        e = tl.where(mask, e, 0.0)
    sc = tl.exp2(d)
    t_new = sc * (t_vec + s_vec * d) + tl.sum(e * a, 1)
    s_new = sc * s_vec + tl.sum(e, 1)
    return m_new, s_new, t_new


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
    roll_ptr,       # (C,) float32 the engine's log-probs           (read if IS_MODE is 1 or 2)
    isw_ptr,        # (C,) float32 given correction weights         (read if IS_MODE == 3)
    isw_out_ptr,    # (C,) float32 out: the correction weight applied (written if IS_MODE > 0)
    flag_out_ptr,   # (C,) int8 out: 1 where the correction truncated or masked (written if IS_MODE is 1 or 2)
    logp_ptr,       # (C,) float32 out: log-prob of the target
    ent_ptr,        # (C,) float32 out: entropy of softmax(z)
    kl_ptr,         # (C,) float32 out: clamped k3 KL               (written if COMPUTE_LOSS)
    clip_ptr,       # (C,) int8 out: 1 where the clamped branch is active (written if COMPUTE_LOSS)
    loss_ptr,       # (C,) float32 out: token_weight * per-token loss (written if COMPUTE_LOSS)
    inv_temp, clip_low, clip_high, kl_coef, ent_coef, w_min, w_max, midpoint, steepness, is_cap, is_low,
    V: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_OLD: tl.constexpr,
    HAS_REF: tl.constexpr,
    HAS_RHO: tl.constexpr,
    COMPUTE_LOSS: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    IS_MODE: tl.constexpr,      # rollout correction: 0 none, 1 token truncate, 2 token mask, 3 given weights
):
    # Streaming a row at HBM speed leaves an H100 ~20 issued instructions per bf16 element, so the loops
    # below keep per-element work to a handful: blocks are (BLOCK // 8, 8) tiles whose 8-wide rows sit in
    # one thread (one 16-byte load), the running max and its rescaling exp are per tile row (not per
    # element), exps are exp2 of log2-scaled values, and full blocks need no mask (only the tail does).
    LOG2E: tl.constexpr = 1.4426950408889634
    LN2: tl.constexpr = 0.6931471805599453
    NEG: tl.constexpr = -1.0e30       # finite "no value yet" max: (NEG - m) * c stays finite, exp2 -> 0
    V_FULL: tl.constexpr = V // BLOCK * BLOCK
    row = tl.program_id(0).to(tl.int64)
    row_ptr = buf_ptr + row * stride_buf
    offs = tl.arange(0, BLOCK // 8)[:, None] * 8 + tl.arange(0, 8)[None, :]   # (BLOCK // 8, 8)
    c = inv_temp * LOG2E              # raw logit difference -> log2 units of the tempered logit

    # Pass 1 (see _online_update). Keeping z - m (not z) in t avoids cancellation in lse - E[z] when |z|
    # is large; the tile rows are combined once at the end.
    m_vec = tl.full([BLOCK // 8], NEG, tl.float32)
    s_vec = tl.zeros([BLOCK // 8], tl.float32)
    t_vec = tl.zeros([BLOCK // 8], tl.float32)
    for start in range(0, V_FULL, BLOCK):
        z = tl.load(row_ptr + start + offs).to(tl.float32)
        m_vec, s_vec, t_vec = _online_update(z, None, m_vec, s_vec, t_vec, c, MASKED=False)
    if V_FULL < V:  # the ragged tail, masked
        idx = V_FULL + offs
        mask = idx < V
        z = tl.where(mask, tl.load(row_ptr + idx, mask=mask, other=0.0).to(tl.float32), NEG)
        m_vec, s_vec, t_vec = _online_update(z, mask, m_vec, s_vec, t_vec, c, MASKED=True)
    m = tl.max(m_vec, 0)
    d = (m_vec - m) * c
    sc = tl.exp2(d)
    s = tl.sum(sc * s_vec, 0)
    t = tl.sum(sc * (t_vec + s_vec * d), 0)
    log_s = tl.log(s)               # lse - m / T
    pz = t / s * LN2                # E_p[(z - m) / T]
    entropy = log_s - pz            # lse - E_p[z / T]

    tgt = tl.load(tgt_ptr + row)
    zt_t = (tl.load(row_ptr + tgt).to(tl.float32) - m) * inv_temp    # read before pass 2 overwrites it
    logp = zt_t - log_s
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
        if IS_MODE == 1 or IS_MODE == 2:
            # the ratio of the weights that generated (old, or this pass's own log-prob) to the engine's
            if HAS_OLD:
                r_is = tl.exp(tl.load(old_ptr + row) - tl.load(roll_ptr + row))
            else:
                r_is = tl.exp(logp - tl.load(roll_ptr + row))
            if IS_MODE == 1:        # truncated IS (is_low 0: no lower bound)
                isw = tl.minimum(tl.maximum(r_is, is_low), is_cap)
                flag = (r_is > is_cap) | (r_is < is_low)
            else:                   # masked IS: the ratio inside the bounds, 0 outside
                inside = (r_is >= is_low) & (r_is <= is_cap)
                isw = tl.where(inside, r_is, 0.0)
                flag = inside == 0
            tl.store(flag_out_ptr + row, flag.to(tl.int8))
            tl.store(isw_out_ptr + row, isw)
            pg = isw * pg
            d_pg = isw * d_pg
        if IS_MODE == 3:
            isw = tl.load(isw_ptr + row)
            tl.store(isw_out_ptr + row, isw)
            pg = isw * pg
            d_pg = isw * d_pg
        if HAS_REF:
            dr = tl.load(ref_ptr + row) - logp
            kl_raw = tl.exp(dr) - dr - 1.0
            kl = tl.minimum(tl.maximum(kl_raw, -10.0), 10.0)
            d_kl = tl.where(kl_raw <= 10.0, 1.0 - tl.exp(dr), 0.0)
        else:
            kl = logp * 0.0
            d_kl = logp * 0.0
        tl.store(kl_ptr + row, kl)
        tl.store(clip_ptr + row, is_clipped.to(tl.int8))
        tl.store(loss_ptr + row, tw * (pg + kl_coef * kl - ent_coef * entropy))

        if WRITE_GRAD:
            coef = tw * (d_pg + kl_coef * d_kl)      # d loss / d logp
            ew = tw * ent_coef                       # d loss / d (-entropy)
            # Pass 2: d/d raw = (coef * (onehot - p) + ew * p * (z/T - E_p[z/T])) / T, with
            # p = 2^((z - m) * c - log2 s). Off the target that is p * ((z - m) * g1 + g0):
            g1 = ew * inv_temp * inv_temp
            g0 = -(ew * pz + coef) * inv_temp
            log2_s = log_s * LOG2E
            tl.debug_barrier()  # every thread has read z_t (above) before any thread overwrites the row
            for start in range(0, V_FULL, BLOCK):
                zm = tl.load(row_ptr + start + offs).to(tl.float32) - m
                p = tl.exp2(zm * c - log2_s)
                tl.store(row_ptr + start + offs, (p * (zm * g1 + g0)).to(buf_ptr.dtype.element_ty))
            if V_FULL < V:
                idx = V_FULL + offs
                mask = idx < V
                zm = tl.where(mask, tl.load(row_ptr + idx, mask=mask, other=0.0).to(tl.float32) - m, 0.0)
                p = tl.exp2(zm * c - log2_s)
                tl.store(row_ptr + idx, (p * (zm * g1 + g0)).to(buf_ptr.dtype.element_ty), mask=mask)
            # The target's one-hot term, written after every thread's stores above (hence the barrier);
            # keeping it out of the loops keeps their stores unmasked and 16 bytes wide.
            tl.debug_barrier()
            p_t = tl.exp(logp)
            g_t = p_t * ((zt_t - pz) * ew * inv_temp - coef * inv_temp) + coef * inv_temp
            tl.store(row_ptr + tgt, g_t.to(buf_ptr.dtype.element_ty))


IS_MODES = {"none": 0, "token_truncate": 1, "token_mask": 2, "sequence_truncate": 3, "sequence_mask": 3}
"""The kernel's ``IS_MODE`` per rollout correction (sequence modes, and any rejection, arrive as given weights)."""


def pick_block(V: int, gpu: bool | None = None) -> tuple[int, int]:
    """(BLOCK, num_warps) for a vocabulary of ``V``; ``gpu`` defaults to "not under the interpreter".

    Small blocks under the interpreter so tests cover several blocks and a ragged tail. On a GPU the
    environment variable ``LEAD_FAST_ROW_BLOCK=BLOCKxWARPS`` (e.g. ``8192x16``) overrides the choice, for
    tuning (``benchmarks/bench_loss_head.py --sweep``).
    """
    on_gpu = (not triton_interpret()) if gpu is None else gpu
    if not on_gpu:
        return 128, 4
    env = os.environ.get("LEAD_FAST_ROW_BLOCK")
    if env:
        try:
            block, warps = (int(x) for x in env.lower().split("x"))
        except ValueError:
            raise ValueError(f"LEAD_FAST_ROW_BLOCK={env!r}: expected BLOCKxWARPS, e.g. 4096x16") from None
        if block < 16 or block & (block - 1) or warps not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"LEAD_FAST_ROW_BLOCK={env!r}: BLOCK must be a power of two >= 16, "
                             "WARPS one of 1, 2, 4, 8, 16, 32")
        return block, warps
    block = max(16, min(4096, triton.next_power_of_2(V)))   # >= 16: the kernel tiles blocks as (BLOCK // 8, 8)
    return block, (16 if block >= 4096 else 8 if block >= 2048 else 4)


def grpo_rows(buf, tok, p, *, write_grad: bool, compute_loss: bool):
    """Same contract as ``rows_torch.grpo_rows``: ``buf`` ``(C, V)`` raw logits, overwritten with the gradient."""
    C, V = buf.shape
    if buf.stride(1) != 1:
        raise ValueError("the logits buffer must be contiguous along the vocabulary")
    dev = buf.device
    adv, tw, old, ref, rho = tok.advantages, tok.token_weights, tok.old_logprobs, tok.ref_logprobs, tok.correct_ratio
    roll, given = tok.rollout_logprobs, tok.is_weights
    mode = (3 if p.weights_before_loss else IS_MODES[p.correction]) if compute_loss else 0
    logp = torch.empty(C, dtype=torch.float32, device=dev)
    ent = torch.empty(C, dtype=torch.float32, device=dev)
    if compute_loss:
        kl = torch.empty(C, dtype=torch.float32, device=dev)
        clipped = torch.empty(C, dtype=torch.int8, device=dev)
        loss = torch.empty(C, dtype=torch.float32, device=dev)
    else:
        kl, clipped, loss = logp, logp, logp  # never written: COMPUTE_LOSS is off
    dummy = logp  # stands in for absent per-token inputs; the kernel never reads it
    isw = torch.empty(C, dtype=torch.float32, device=dev) if mode else dummy
    flag = torch.empty(C, dtype=torch.int8, device=dev) if mode in (1, 2) else clipped
    block, warps = pick_block(V)
    _grpo_rows_kernel[(C,)](
        buf, buf.stride(0), tok.targets.contiguous(),
        dummy if adv is None else adv, dummy if tw is None else tw,
        dummy if old is None else old, dummy if ref is None else ref, dummy if rho is None else rho,
        dummy if roll is None else roll, dummy if given is None else given, isw, flag,
        logp, ent, kl, clipped, loss,
        1.0 / p.temperature, p.clip_low, p.clip_high, p.kl_coef, p.entropy_coef,
        p.w_min, p.w_max, p.midpoint, p.steepness, p.correction_cap, p.correction_low or 0.0,
        V=V, BLOCK=block, HAS_OLD=old is not None, HAS_REF=ref is not None, HAS_RHO=rho is not None,
        COMPUTE_LOSS=compute_loss, WRITE_GRAD=compute_loss and write_grad, IS_MODE=mode, num_warps=warps,
    )
    out = dict(logp=logp, entropy=ent)
    if compute_loss:
        out.update(kl=kl, clipped=clipped.bool(), loss=loss)
    if mode:
        out["is_weight"] = isw
    if mode in (1, 2):
        out["is_flag"] = flag.bool()
    return out
