"""Public API of the loss head: ``grpo_loss`` and ``token_logprobs`` (the definition is in docs/design.md).

The chunk loop is shared by both backends; only the row operation differs (plain torch or one Triton
kernel). Per chunk of ``C`` tokens:

1. ``buf[:C] = hidden_c @ weight.T (+ bias)`` into one reused ``(C, V)`` buffer;
2. the row op computes log-probs, ratio, clipping, KL, entropy, the difficulty weight and overwrites
   ``buf`` with ``d loss / d logits``;
3. ``grad_hidden_c = buf @ weight``; ``grad_weight += buf.T @ hidden_c``; ``grad_bias += buf.sum(0)``.

Gradients are computed in forward (as Liger's fused linear cross-entropy does); backward only scales
them by ``grad_output``. Peak extra memory is one ``(C, V)`` buffer (plus the torch row op's float32
temporaries), never ``(N, V)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch

from lead_fast.choices import Correction, LossBackend, Rejection, options
from lead_fast.ops import rows_torch
from lead_fast.ops.common import LossParams, TokenInputs, triton_interpret

BACKENDS = options(LossBackend)
CORRECTIONS = options(Correction)
REJECTIONS = options(Rejection)


@dataclass
class GRPOLossOutput:
    """``loss``: scalar, differentiable w.r.t. hidden, weight, bias. The rest are ``(N,)`` and detached."""

    loss: torch.Tensor
    logprobs: torch.Tensor
    entropy: torch.Tensor
    kl: torch.Tensor
    clipped: torch.Tensor
    is_weight: torch.Tensor | None = None   # the rollout correction's weight on each token (None: no correction)
    is_flag: torch.Tensor | None = None     # True where the correction truncated or masked (None: no correction)


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> ``triton`` on CUDA (when Triton imports), else ``torch``; validates explicit choices."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cuda":
            try:
                import triton  # noqa: F401
                return "triton"
            except ImportError:
                return "torch"
        return "torch"
    if backend == "triton" and device.type != "cuda" and not triton_interpret():
        raise ValueError("backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 (set before importing "
                         f"triton) to run the kernel on {device.type} tensors; use backend='torch' there")
    return backend


def _row_op(backend: str):
    if backend == "torch":
        return rows_torch.grpo_rows
    from lead_fast.ops import rows_triton   # imports Triton: only when its backend is asked for
    return rows_triton.grpo_rows


def default_chunk_size(N: int, V: int, device: torch.device, dtype: torch.dtype, backend: str) -> int:
    """Tokens per chunk: the ``(C, V)`` buffer (and the torch op's float32 temporaries) fit a budget.

    On CUDA the budget is an eighth of free memory capped at 1.3 GB of buffer (C <= 8192); on CPU 256 MiB.
    """
    if backend == "torch":
        elem = torch.finfo(dtype).bits // 8
        # buffer + the row op's float32 probabilities (+ a float32 copy of the logits for a 16-bit buffer)
        per_row = V * (elem + 4 + (4 if elem < 4 else 0))
    else:
        per_row = V * (torch.finfo(dtype).bits // 8)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = min(free // 8, 1_300_000_000)
    else:
        budget = 256 * 2**20
    return chunk_for_budget(N, per_row, budget)


def chunk_for_budget(N: int, per_row: int, budget: int) -> int:
    """The largest chunk whose rows fit ``budget`` bytes (at most 8192, a multiple of 128 from 256 up),
    then evened out: 8192 tokens in 2 x 4096, not 4224 + 3968 (the same number of passes, no small last
    GEMM). Rounding the even size up to 128 stays within the cap, itself a multiple of 128."""
    cap = int(min(max(1, budget // per_row), 8192))
    if cap >= 256:
        cap = cap // 128 * 128
    n = max(1, -(-N // cap))
    even = -(-N // n)
    if cap >= 256:
        even = -(-even // 128) * 128
    return int(max(1, min(even, cap, max(N, 1))))


def buffer_stride(V: int, backend: str) -> int:
    """Row stride of the chunk buffer: for Triton a multiple of 64 elements, so every row starts 128-byte
    aligned and the kernel's loads are 16 bytes wide whatever V is (V = 32001, say)."""
    return V if backend == "torch" else -(-V // 64) * 64


def _check_inputs(hidden, weight, targets, per_token: dict, bias):
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be (N, H), got shape {tuple(hidden.shape)}")
    N, H = hidden.shape
    if weight.dim() != 2 or weight.shape[1] != H:
        raise ValueError(f"weight must be (V, H={H}), got shape {tuple(weight.shape)}")
    V = weight.shape[0]
    if weight.dtype != hidden.dtype:
        raise ValueError(f"hidden and weight must share a dtype, got {hidden.dtype} and {weight.dtype}")
    if bias is not None and (bias.shape != (V,)):
        raise ValueError(f"bias must be (V={V},), got shape {tuple(bias.shape)}")
    if targets.shape != (N,):
        raise ValueError(f"targets must be (N={N},), got shape {tuple(targets.shape)}")
    if targets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"targets must be integer token ids, got {targets.dtype}")
    for name, t in per_token.items():
        if t is not None and t.shape != (N,):
            raise ValueError(f"{name} must be (N={N},) like targets, got shape {tuple(t.shape)}")
    if N and bool(((targets < 0) | (targets >= V)).any()):  # one host sync, not two
        raise ValueError(f"targets must lie in [0, V={V})")
    return N, H, V


def _f32(t, device):
    return None if t is None else t.detach().to(device=device, dtype=torch.float32).contiguous()


def _targets(t, device):
    return t.to(device=device, dtype=torch.int64).contiguous()


def _run(hidden, weight, bias, tok: TokenInputs, p: LossParams, backend: str, chunk_size: int | None,
         want_grad: tuple[bool, bool, bool], compute_loss: bool):
    """The shared chunk loop. Returns per-token outputs and (grad_hidden, grad_weight, grad_bias)."""
    N, H = hidden.shape
    V = weight.shape[0]
    dev = hidden.device
    row_op = _row_op(backend)
    C = chunk_size or default_chunk_size(N, V, dev, hidden.dtype, backend)
    if C < 1:
        raise ValueError(f"chunk_size must be >= 1, got {C}")
    C = min(C, max(N, 1))
    # bf16/fp16 GEMMs on CPU are slow and imprecise; the torch backend on CPU works in float32.
    low = hidden.dtype in (torch.float16, torch.bfloat16)
    cdtype = torch.float32 if (dev.type == "cpu" and backend == "torch" and low) else hidden.dtype
    h_all = hidden.detach().to(cdtype)
    w = weight.detach().to(cdtype)
    b = None if bias is None else bias.detach().to(cdtype)

    write_grad = compute_loss and any(want_grad)
    gh = torch.empty((N, H), dtype=cdtype, device=dev) if write_grad and want_grad[0] else None
    # The weight gradient accumulates in the compute dtype (bf16 on GPU): each chunk's GEMM sums in fp32
    # and rounds once into gw. Why not fp32 accumulation: docs/design.md ("Accumulating the weight
    # gradient"), with the measurements and their source.
    gw = torch.empty((V, H), dtype=cdtype, device=dev) if write_grad and want_grad[1] else None
    acc = torch.promote_types(cdtype, torch.float32)
    gb = torch.zeros((V,), dtype=acc, device=dev) if write_grad and want_grad[2] else None
    outs: dict[str, list[torch.Tensor]] = {}
    # the one reused logits / dlogits buffer (the GEMMs write and read it through its row stride)
    buf = torch.empty((C, buffer_stride(V, backend)), dtype=cdtype, device=dev)[:, :V]

    for i, s in enumerate(range(0, N, C)):
        e = min(s + C, N)
        h = h_all[s:e]                                       # (c, H)
        lg = buf[: e - s]                                    # (c, V)
        torch.matmul(h, w.T, out=lg)
        if b is not None:
            lg += b
        row_out = row_op(lg, tok.slice(s, e), p, write_grad=write_grad, compute_loss=compute_loss)
        for k, v in row_out.items():
            outs.setdefault(k, []).append(v)
        if write_grad:
            if gh is not None:
                torch.matmul(lg, w, out=gh[s:e])              # (c, H)
            if gw is not None:
                if i == 0:
                    torch.matmul(lg.T, h, out=gw)            # first chunk writes: no zero-fill + add
                else:
                    gw.addmm_(lg.T, h)                       # (V, H)
            if gb is not None:
                gb += lg.sum(0, dtype=acc)
    res = {k: torch.cat(v) if v else torch.empty(0, device=dev) for k, v in outs.items()}
    if N == 0:
        res = dict(logp=torch.empty(0, device=dev), entropy=torch.empty(0, device=dev),
                   kl=torch.empty(0, device=dev), clipped=torch.empty(0, dtype=torch.bool, device=dev),
                   loss=torch.empty(0, device=dev), is_weight=torch.empty(0, device=dev),
                   is_flag=torch.empty(0, dtype=torch.bool, device=dev))
        if gw is not None:
            gw.zero_()
        if gh is not None:
            gh.zero_()
    grads = (
        None if gh is None else gh.to(hidden.dtype),
        None if gw is None else gw.to(weight.dtype),
        None if gb is None else gb.to(bias.dtype),
    )
    return res, grads


class _GRPOLossFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, tok, p, backend, chunk_size):
        want = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        res, grads = _run(hidden, weight, bias, tok, p, backend, chunk_size, want, compute_loss=True)
        # Kept on ctx, not saved: backward hands these very tensors to autograd and drops its own reference,
        # so the (V, H) weight gradient becomes .grad without a copy (a saved tensor stays referenced until
        # the graph is freed, and autograd then clones it: 0.5 GB a micro-batch at Qwen2.5-0.5B's shape).
        ctx.grads = list(grads)
        loss = res["loss"].sum()
        none = torch.empty(0, device=hidden.device)       # autograd outputs are tensors: empty for "absent"
        isw, flag = res.get("is_weight", none), res.get("is_flag", none)
        ctx.mark_non_differentiable(res["logp"], res["entropy"], res["kl"], res["clipped"], isw, flag)
        return loss, res["logp"], res["entropy"], res["kl"], res["clipped"], isw, flag

    @staticmethod
    def backward(ctx, grad_loss, *_):
        g, ctx.grads = ctx.grads, None
        if g is None:
            raise RuntimeError("the fused GRPO loss was differentiated twice: its gradients are computed in forward "
                               "and handed over whole by the first backward (retain_graph is not supported)")
        # The usual case is loss.backward(): grad 1 needs no pass over the (V, H) weight gradient.
        if not bool(grad_loss == 1):
            g = [None if t is None else t.mul_(grad_loss.to(t.dtype)) for t in g]
        return g[0], g[1], g[2], None, None, None, None


def grpo_loss(hidden, weight, targets, advantages, token_weights, *, old_logprobs=None, ref_logprobs=None,
              bias=None, clip_low=0.2, clip_high=0.2, kl_coef=0.0, entropy_coef=0.0, temperature=1.0,
              correct_ratio=None, w_min=0.4, w_max=1.5, midpoint=0.75, steepness=10.0, backend="auto",
              chunk_size=None, rollout_logprobs=None, seq_ids=None, rollout_correction="none",
              correction_cap=2.0, correction_low=None, rejection="none", rejection_low=0.5,
              rejection_high=2.0) -> GRPOLossOutput:
    """Clipped GRPO loss with KL, entropy and difficulty weights, fused with the LM head.

    hidden ``(N, H)``, weight ``(V, H)``, bias ``(V,)`` or None, targets ``(N,)`` token ids; every other
    per-token argument is ``(N,)``. ``token_weights`` carry the aggregation (e.g. ``1 / total tokens`` for
    a token mean), so the loss is a plain weighted sum and does not depend on chunking. See docs/design.md.
    ``rollout_correction`` (``token_truncate``, ``token_mask``, ``sequence_truncate``, ``sequence_mask``: TRL's
    modes) weighs the policy-gradient term by the importance ratio of the generating weights to the engine's
    ``rollout_logprobs`` (sequence modes: per response, ``seq_ids`` saying which response each token is in);
    ``rejection`` (``token``, ``sequence``, ``geometric``) zeroes tokens or responses whose ratio leaves
    ``[rejection_low, rejection_high]``.
    The keyword arguments become one ``TokenInputs`` and one ``LossParams``, by name (``fused_grpo_loss``).
    """
    tokens = TokenInputs(targets=targets, advantages=advantages, token_weights=token_weights,
                         old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, correct_ratio=correct_ratio,
                         rollout_logprobs=rollout_logprobs, seq_ids=seq_ids)
    params = LossParams(clip_low=float(clip_low), clip_high=float(clip_high), kl_coef=float(kl_coef),
                        entropy_coef=float(entropy_coef), temperature=float(temperature), w_min=float(w_min),
                        w_max=float(w_max), midpoint=float(midpoint), steepness=float(steepness),
                        correction=rollout_correction, correction_cap=float(correction_cap),
                        correction_low=None if correction_low is None else float(correction_low),
                        rejection=rejection, rejection_low=float(rejection_low), rejection_high=float(rejection_high))
    return fused_grpo_loss(hidden, weight, tokens, params, bias=bias, backend=backend, chunk_size=chunk_size)


def given_weights(lp_old: torch.Tensor, rollout: torch.Tensor, seq_ids: torch.Tensor,
                  p: LossParams) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights computed before the loss (sequence corrections, rejections): each token's weight on the
    policy-gradient term and whether the correction truncated, masked or rejected it.

    The correction, as TRL's ``vllm_importance_sampling_mode`` computes it: the ratio ``exp(lp_old -
    lp_rollout)`` per token, or per response the product of its tokens' ratios (``sequence_*``), clamped to
    ``[low, cap]`` (``*_truncate``) or kept inside those bounds and 0 outside (``*_mask``); the lower bound
    only when set. The rejection then zeroes what leaves ``[rejection_low, rejection_high]``: each token by its
    ratio (``token``), each response by its product (``sequence``) or by its geometric mean (``geometric``:
    the per-token mismatch, comparable across lengths, where a product over thousands of tokens leaves any
    fixed bounds for a per-token gap of 1e-3). All in log space, so no product overflows."""
    d = lp_old.double() - rollout.double()
    ids = seq_ids.long()
    n = int(ids.max()) + 1 if ids.numel() else 0
    total = torch.zeros(n, dtype=torch.float64, device=d.device).index_add_(0, ids, d)
    w, flag = torch.ones_like(d), torch.zeros_like(d, dtype=torch.bool)
    if p.correction != "none":
        lr = d if p.token_correction else total[ids]
        log_low = math.log(p.correction_low) if p.correction_low else -math.inf
        log_cap = math.log(p.correction_cap)
        inside = (lr >= log_low) & (lr <= log_cap)
        if p.correction.endswith("truncate"):
            w = torch.exp(lr.clamp(min=log_low, max=log_cap))
        else:
            w = torch.where(inside, torch.exp(lr.clamp(max=log_cap)), 0.0)
        flag = ~inside
    if p.rejection != "none":
        if p.rejection == "token":
            x = d
        elif p.rejection == "sequence":
            x = total[ids]
        else:
            count = torch.zeros(n, dtype=torch.float64, device=d.device).index_add_(0, ids, torch.ones_like(d))
            x = (total / count.clamp(min=1))[ids]
        log_low = math.log(p.rejection_low) if p.rejection_low > 0 else -math.inf
        keep = (x >= log_low) & (x <= math.log(p.rejection_high))
        w, flag = w * keep, flag | ~keep
    return w, flag


def fused_grpo_loss(hidden, weight, tokens: TokenInputs, params: LossParams, *, bias=None, backend="auto",
                    chunk_size=None) -> GRPOLossOutput:
    """``grpo_loss`` on its typed inputs: the trainer builds ``params`` once and ``tokens`` per micro-batch."""
    if params.temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {params.temperature}")
    if tokens.ref_logprobs is None and params.kl_coef != 0.0:
        raise ValueError("kl_coef != 0 needs ref_logprobs")
    if params.correction not in CORRECTIONS:
        raise ValueError(f"rollout_correction must be one of {', '.join(CORRECTIONS)}, got {params.correction!r}")
    if params.rejection not in REJECTIONS:
        raise ValueError(f"rejection must be one of {', '.join(REJECTIONS)}, got {params.rejection!r}")
    what = f"rollout_correction={params.correction!r}" if params.correction != "none" else \
        f"rejection={params.rejection!r}"
    if params.corrected and tokens.rollout_logprobs is None:
        raise ValueError(f"{what} needs rollout_logprobs (the engine's)")
    if params.weights_before_loss and tokens.seq_ids is None:
        raise ValueError(f"{what} needs seq_ids (each token's response)")
    per_token = {f.name: getattr(tokens, f.name) for f in fields(tokens) if f.name != "targets"}
    _check_inputs(hidden, weight, tokens.targets, per_token, bias)
    backend = resolve_backend(backend, hidden.device)
    dev = hidden.device
    tok = TokenInputs(targets=_targets(tokens.targets, dev), seq_ids=None,
                      **{k: _f32(t, dev) for k, t in per_token.items() if k != "seq_ids"})
    seq_flag = None
    if params.weights_before_loss:
        # each response's sum before its loss: a forward-only pass of the head over these hidden states (not
        # a second model forward), or the old-policy log-probs when that pass already ran
        lp_old = tok.old_logprobs
        if lp_old is None:       # in the compute dtype (float64 for float64 inputs), like the loss's own
            lp_old = _run(hidden, weight, bias, TokenInputs(targets=tok.targets),
                          LossParams(temperature=params.temperature), backend, chunk_size, (False, False, False),
                          compute_loss=False)[0]["logp"]
        isw, seq_flag = given_weights(lp_old, tok.rollout_logprobs, tokens.seq_ids.to(dev), params)
        tok = replace(tok, is_weights=isw.to(torch.promote_types(hidden.dtype, torch.float32)))
    loss, logp, ent, kl, clipped, isw, flag = _GRPOLossFn.apply(hidden, weight, bias, tok, params, backend,
                                                                 chunk_size)
    corrected = params.corrected
    return GRPOLossOutput(loss=loss, logprobs=logp, entropy=ent, kl=kl, clipped=clipped.bool(),
                          is_weight=isw if corrected else None,
                          is_flag=(seq_flag if seq_flag is not None else flag.bool()) if corrected else None)


@torch.no_grad()
def token_logprobs(hidden, weight, targets, *, bias=None, temperature=1.0, backend="auto", chunk_size=None,
                   return_entropy=False):
    """Log-probs ``(N,)`` float32 of ``targets`` under ``softmax((hidden @ weight.T + bias) / T)``; no graph.

    With ``return_entropy=True`` returns ``(logprobs, entropy)``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    _check_inputs(hidden, weight, targets, {}, bias)
    backend = resolve_backend(backend, hidden.device)
    p = LossParams(temperature=float(temperature))
    tok = TokenInputs(targets=_targets(targets, hidden.device))
    res, _ = _run(hidden, weight, bias, tok, p, backend, chunk_size, (False, False, False), compute_loss=False)
    logp = res["logp"].float()
    return (logp, res["entropy"].float()) if return_entropy else logp
