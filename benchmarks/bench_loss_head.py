"""Benchmark the GRPO loss head against its peers and the GEMM floor.

    python benchmarks/bench_loss_head.py            # the two Qwen-sized shapes (8192x4096x151936, 16384x5120x152064), bf16, on CUDA
    python benchmarks/bench_loss_head.py --quick    # tiny shapes on CPU: keeps this script from rotting

Every method computes the same loss (clipped GRPO, token mean, old log-probs given, no KL) and its
gradients w.r.t. hidden and weight (forward+backward), or the target log-probs (forward only). Each row:
median ms, TFLOP/s (of the 6NHV / 2NHV floor work), ratio to the floor, transient peak GiB above the
inputs and the gradient tensors every method must return, and the loss value. Prints a table, writes JSON.
The "frozen weight" rows (LoRA: the output head is not trained) compute only the hidden gradient: their work
is 4NHV and their floor the two GEMMs that remain.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lead_fast.ops import grpo_loss, token_logprobs  # noqa: E402

GiB = 2**30
CLIP = 0.2


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench_ms(fn, dev, warmup: int, rep: int) -> float:
    """Median milliseconds."""
    if dev.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    fn()
    ts = []
    for _ in range(3):  # CPU smoke timing only; numbers that matter come from CUDA
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def transient_gib(fn, dev, grad_bytes: int, reset=lambda: None):
    """Peak memory during ``fn`` above what was allocated before it, less the returned gradients.

    ``reset`` frees the previous call's gradients first: they would otherwise sit in the baseline and be
    subtracted twice (``fn`` frees them before it allocates the new ones).
    """
    if dev.type != "cuda":
        return None
    fn()  # warm (autotune, compile) outside the measurement
    reset()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return max(0.0, (torch.cuda.max_memory_allocated() - base - grad_bytes) / GiB)


def make_inputs(N, H, V, dtype, dev, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    hidden = (torch.randn(N, H, generator=g) * 1.0).to(dtype).to(dev)
    weight = (torch.randn(V, H, generator=g) / H**0.5).to(dtype).to(dev)
    targets = torch.randint(0, V, (N,), generator=g).to(dev)
    # one advantage per sequence (Liger's peers take (B,)); every token of a sequence shares it
    B = 8 if N % 8 == 0 else 1
    adv = torch.randn(B, 1, generator=g).expand(B, N // B).reshape(N).contiguous().to(dev)
    lp = token_logprobs(hidden, weight, targets)
    old = (lp + 0.1 * torch.randn(N, generator=g).to(dev)).float()
    return hidden, weight, targets, adv, old


def grpo_from_logp(logp, old, adv):
    ratio = torch.exp(logp - old)
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - CLIP, 1 + CLIP))
    return pg.mean()


def floor_3_gemms(hidden, weight):
    """The floor of fwd+bwd: the logits GEMM and the two gradient GEMMs, alone."""
    logits = hidden @ weight.T
    logits @ weight
    logits.T @ hidden


def floor_2_gemms(hidden, weight):
    """The floor of fwd+bwd with a frozen weight (LoRA): the logits GEMM and the hidden gradient's, alone."""
    logits = hidden @ weight.T
    logits @ weight


class Leaves:
    """Copies of hidden and weight that the fwd+bwd methods differentiate (``frozen``: not the weight, as
    under LoRA, so no weight gradient is computed)."""

    def __init__(self, hidden, weight, frozen: bool = False):
        self.h = hidden.clone().requires_grad_(True)
        self.w = weight.clone().requires_grad_(not frozen)

    def clear(self):
        """Drop the gradients the previous call left (each call starts from none)."""
        self.h.grad = self.w.grad = None


def lead_fwd_bwd(x: Leaves, targets, adv, old, backend, chunk=None, correction="none"):
    """lead_fast's head; ``correction``: a rollout-correction mode against engine log-probs equal to ``old``
    (every weight 1, so the loss matches the other rows while the correction's work is done)."""
    N = targets.numel()
    tw = torch.full((N,), 1.0 / N, device=targets.device)
    extra = {}
    if correction != "none":
        extra = dict(rollout_correction=correction, rollout_logprobs=old,
                     seq_ids=torch.arange(N, device=targets.device) * 8 // N)       # 8 responses

    def run():
        x.clear()
        out = grpo_loss(x.h, x.w, targets, adv, tw, old_logprobs=old, clip_low=CLIP, clip_high=CLIP,
                        backend=backend, chunk_size=chunk, **extra)
        out.loss.backward()
        return out.loss
    return run


def measure(fn, dev, warmup, rep, grad_bytes, reset):
    """(value of one call, median ms, transient GiB), or the failure as a status string."""
    try:
        val = fn()
        return val, bench_ms(fn, dev, warmup, rep), transient_gib(fn, dev, grad_bytes, reset)
    except Exception as e:  # noqa: BLE001  (a peer failing is reported, not fatal)
        return f"failed: {type(e).__name__}: {str(e)[:200]}"


def methods_fwd_bwd(hidden, weight, targets, adv, old, dev):
    """(name -> callable returning the loss after its backward, or a string saying why it is missing;
    a function that drops the gradients the callables leave behind)."""
    N, H = hidden.shape
    x = Leaves(hidden, weight)
    h, w, clear = x.h, x.w, x.clear

    def plain_torch():
        clear()
        logits = (h @ w.T).float()
        logp = torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)
        loss = grpo_from_logp(logp, old, adv)
        loss.backward()
        return loss

    def through_logp(logp_of):
        """A peer that gives per-token log-probs: the same GRPO objective on them, then its backward."""
        def run():
            clear()
            loss = grpo_from_logp(logp_of().float(), old, adv)
            loss.backward()
            return loss
        return run

    out = {"GEMM floor (3 GEMMs)": lambda: floor_3_gemms(hidden, weight)}
    frozen = Leaves(hidden, weight, frozen=True)
    if dev.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        out["lead_fast triton"] = lead_fwd_bwd(x, targets, adv, old, "triton")
        out["lead_fast triton + token_truncate"] = lead_fwd_bwd(x, targets, adv, old, "triton",
                                                                correction="token_truncate")
    else:
        out["lead_fast triton"] = "missing: needs CUDA (or TRITON_INTERPRET=1)"
    out["lead_fast torch"] = lead_fwd_bwd(x, targets, adv, old, "torch")
    out["GEMM floor, frozen weight (2 GEMMs)"] = lambda: floor_2_gemms(hidden, weight)
    out["lead_fast torch, frozen weight"] = lead_fwd_bwd(frozen, targets, adv, old, "torch")
    if dev.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        out["lead_fast triton, frozen weight"] = lead_fwd_bwd(frozen, targets, adv, old, "triton")
    out["lead_fast torch + token_truncate"] = lead_fwd_bwd(x, targets, adv, old, "torch", correction="token_truncate")
    out["lead_fast torch + sequence_mask"] = lead_fwd_bwd(x, targets, adv, old, "torch", correction="sequence_mask")
    out["torch full logits (fp32 log_softmax)"] = plain_torch

    B = 8 if N % 8 == 0 else 1
    T = N // B
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        peer = LigerFusedLinearGRPOLoss(beta=0.0, use_ref_model=False, compiled=dev.type == "cuda",
                                        epsilon_low=CLIP, epsilon_high=CLIP, loss_type="dapo", temperature=1.0)
        mask = torch.ones(B, T, dtype=torch.long, device=dev)

        def liger_chunked():
            clear()
            res = peer(h.view(B, T, H), w, targets.view(B, T), mask, adv.view(B, T)[:, 0].contiguous(),
                       old_per_token_logps=old.view(B, T))
            loss = res[0] if isinstance(res, tuple) else res
            loss.backward()
            return loss
        out["Liger LigerFusedLinearGRPOLoss (chunked)"] = liger_chunked
    except Exception as e:  # noqa: BLE001
        out["Liger LigerFusedLinearGRPOLoss (chunked)"] = f"missing: {type(e).__name__}: {e}"

    try:
        # TRL 1.16's own fused head (GRPOTrainer's default): cuBLAS tiles folded by a Triton kernel on CUDA,
        # torch ops elsewhere, tiles recomputed in backward; its default vocabulary chunk, the entropy with it
        from trl.kernels.chunked_logprob import ChunkedLogProbFunction

        out["TRL ChunkedLogProbFunction (log-probs + entropy)"] = through_logp(
            lambda: ChunkedLogProbFunction.apply(h, w, None, targets, 1.0, 32768, None, 1.0, ("entropy",))[0])
    except Exception as e:  # noqa: BLE001
        out["TRL ChunkedLogProbFunction (log-probs + entropy)"] = f"missing: {type(e).__name__}: {e}"

    if dev.type != "cuda":
        out["Liger triton_grpo_loss (full logits)"] = "missing: needs CUDA"
        out["Cut Cross-Entropy (log-probs only)"] = "missing: needs CUDA"
        return out, clear
    try:
        from liger_kernel.transformers.grpo_loss import triton_grpo_loss

        hx = torch.cat([h.view(B, T, H), h.view(B, T, H)[:, -1:]], 1)  # (B, T+1, H): Liger drops the last position
        mask = torch.ones(B, T, dtype=torch.int32, device=dev)

        def liger_triton():
            clear()
            logits = (hx @ w.T).contiguous()
            res = triton_grpo_loss(logits, old.view(B, T), None, targets.view(B, T), adv.view(B, T)[:, 0].contiguous(),
                                   mask, temperature=1.0, beta=0.0, eps_low=CLIP, eps_high=CLIP, loss_type="dapo",
                                   reduce=True)
            loss = res[0] if isinstance(res, tuple) else res
            loss.backward()
            return loss
        out["Liger triton_grpo_loss (full logits)"] = liger_triton
    except Exception as e:  # noqa: BLE001
        out["Liger triton_grpo_loss (full logits)"] = f"missing: {type(e).__name__}: {e}"
    try:
        from cut_cross_entropy import linear_cross_entropy

        out["Cut Cross-Entropy (log-probs only)"] = through_logp(
            lambda: -linear_cross_entropy(h, w, targets, reduction="none"))
    except Exception as e:  # noqa: BLE001
        out["Cut Cross-Entropy (log-probs only)"] = f"missing: {type(e).__name__}: {e}"
    return out, clear


def methods_fwd(hidden, weight, targets, dev):
    N, H = hidden.shape
    out = {"GEMM floor (1 GEMM)": lambda: hidden @ weight.T}
    if dev.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        out["lead_fast triton"] = lambda: token_logprobs(hidden, weight, targets, backend="triton")
    else:
        out["lead_fast triton"] = "missing: needs CUDA (or TRITON_INTERPRET=1)"
    out["lead_fast torch"] = lambda: token_logprobs(hidden, weight, targets, backend="torch")

    @torch.no_grad()
    def plain():
        return torch.log_softmax((hidden @ weight.T).float(), -1).gather(1, targets[:, None]).squeeze(1)
    out["torch full logits (fp32 log_softmax)"] = plain
    if dev.type != "cuda":
        out["Liger fused_selective_log_softmax (full logits)"] = "missing: needs CUDA"
        out["Cut Cross-Entropy (log-probs only)"] = "missing: needs CUDA"
        return out
    try:
        from liger_kernel.ops.grpo_loss import fused_selective_log_softmax

        B = 8 if N % 8 == 0 else 1
        T = N // B
        hx = torch.cat([hidden.view(B, T, H), hidden.view(B, T, H)[:, -1:]], 1)

        @torch.no_grad()
        def liger_sel():
            return fused_selective_log_softmax((hx @ weight.T).contiguous(), targets.view(B, T), temperature=1.0)
        out["Liger fused_selective_log_softmax (full logits)"] = liger_sel
    except Exception as e:  # noqa: BLE001
        out["Liger fused_selective_log_softmax (full logits)"] = f"missing: {type(e).__name__}: {e}"
    try:
        from cut_cross_entropy import linear_cross_entropy

        @torch.no_grad()
        def cce():
            return -linear_cross_entropy(hidden, weight, targets, reduction="none")
        out["Cut Cross-Entropy (log-probs only)"] = cce
    except Exception as e:  # noqa: BLE001
        out["Cut Cross-Entropy (log-probs only)"] = f"missing: {type(e).__name__}: {e}"
    return out


def run_shape(N, H, V, dtype, dev, warmup, rep):
    hidden, weight, targets, adv, old = make_inputs(N, H, V, dtype, dev)
    esz = hidden.element_size()
    rows = []
    fb_methods, clear = methods_fwd_bwd(hidden, weight, targets, adv, old, dev)
    for mode, flops, grad_bytes, methods, reset in (
        ("fwd+bwd", 6 * N * H * V, (N * H + V * H) * esz, fb_methods, clear),
        ("fwd", 2 * N * H * V, 0, methods_fwd(hidden, weight, targets, dev), lambda: None),
    ):
        floor_ms = frozen_floor_ms = None
        ref_val = None
        for name, fn in methods.items():
            print(f"  {mode:<8} {name} ...", file=sys.stderr, flush=True)
            row = dict(shape=f"N={N} H={H} V={V}", N=N, H=H, V=V, mode=mode, method=name)
            if isinstance(fn, str):
                row.update(status=fn)
                rows.append(row)
                continue
            # a frozen weight (LoRA): 2 GEMMs of work, only the hidden gradient kept, its own floor
            frozen = "frozen weight" in name
            res = measure(fn, dev, warmup, rep, N * H * esz if frozen else grad_bytes, reset)
            if isinstance(res, str):
                rows.append(dict(row, status=res))
                continue
            val, ms, mem = res
            if floor_ms is None:
                floor_ms = ms
            if frozen and frozen_floor_ms is None:
                frozen_floor_ms = ms
            if mode == "fwd+bwd" and isinstance(val, torch.Tensor):
                v = float(val.detach().float())
                row["loss"] = v
                ref_val = v if ref_val is None else ref_val
                row["loss_rel_diff"] = abs(v - ref_val) / max(abs(ref_val), 1e-12)  # vs the first loss (ours)
            elif isinstance(val, torch.Tensor) and val.dim() == 1 and val.numel() == N:
                row["logprob_sum"] = float(val.float().sum())
            work, floor = (flops * 2 // 3, frozen_floor_ms) if frozen else (flops, floor_ms)
            row.update(status="ok", ms=ms, tflops=work / ms / 1e9, x_floor=ms / floor, transient_gib=mem)
            rows.append(row)
    return rows


SWEEP_BLOCKS = ("2048x8", "4096x8", "4096x16", "8192x16", "8192x32")
SWEEP_CHUNKS = (2048, 4096, 8192)


def run_sweep(N, H, V, dtype, dev, warmup, rep, blocks=SWEEP_BLOCKS, chunks=SWEEP_CHUNKS):
    """lead_fast triton under every row-kernel config (LEAD_FAST_ROW_BLOCK) and chunk size, with the floors."""
    hidden, weight, targets, adv, old = make_inputs(N, H, V, dtype, dev)
    x = Leaves(hidden, weight)
    grad_bytes = (N * H + V * H) * hidden.element_size()
    shape = f"N={N} H={H} V={V}"
    floors = {"fwd+bwd": bench_ms(lambda: floor_3_gemms(hidden, weight), dev, warmup, rep),
              "fwd": bench_ms(lambda: hidden @ weight.T, dev, warmup, rep)}
    rows = [dict(shape=shape, mode=m, method="GEMM floor", status="ok", ms=ms, x_floor=1.0, transient_gib=None)
            for m, ms in floors.items()]
    saved = os.environ.get("LEAD_FAST_ROW_BLOCK")
    try:
        for cfg in blocks:
            os.environ["LEAD_FAST_ROW_BLOCK"] = cfg
            for chunk in chunks:
                for mode, fn, gb, reset in (
                    ("fwd+bwd", lead_fwd_bwd(x, targets, adv, old, "triton", chunk), grad_bytes, x.clear),
                    ("fwd", lambda c=chunk: token_logprobs(hidden, weight, targets, backend="triton", chunk_size=c),
                     0, lambda: None),
                ):
                    row = dict(shape=shape, mode=mode, method=f"lead_fast triton {cfg} C={chunk}")
                    print(f"  {mode:<8} {row['method']} ...", file=sys.stderr, flush=True)
                    res = measure(fn, dev, warmup, rep, gb, reset)
                    if isinstance(res, str):
                        rows.append(dict(row, status=res))
                        continue
                    val, ms, mem = res
                    row.update(status="ok", ms=ms, x_floor=ms / floors[mode], transient_gib=mem)
                    if mode == "fwd+bwd":
                        row["loss"] = float(val.detach().float())
                    rows.append(row)
    finally:
        if saved is None:
            os.environ.pop("LEAD_FAST_ROW_BLOCK", None)
        else:
            os.environ["LEAD_FAST_ROW_BLOCK"] = saved
    return rows


def fastest_first(rows):
    """Sweep rows grouped by shape and mode, fastest first."""
    return sorted(rows, key=lambda r: (r["shape"], r["mode"], r.get("ms", float("inf"))))


def print_table(rows):
    print(f"{'shape':<24} {'mode':<8} {'method':<48} {'ms':>9} {'TFLOP/s':>8} {'x floor':>8} {'GiB':>7} {'loss':>11}")
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['shape']:<24} {r['mode']:<8} {r['method']:<48} {r['status']}")
            continue
        gib = "-" if r["transient_gib"] is None else f"{r['transient_gib']:.3f}"
        loss = f"{r['loss']:.6f}" if "loss" in r else ""
        if r.get("loss_rel_diff", 0.0) > 1e-2:
            loss += " (!)"  # disagrees with lead_fast's loss by more than 1%
        tflops = f"{r['tflops']:8.1f}" if "tflops" in r else f"{'':8}"
        print(f"{r['shape']:<24} {r['mode']:<8} {r['method']:<48} {r['ms']:9.2f} {tflops} "
              f"{r['x_floor']:8.3f} {gib:>7} {loss:>11}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes on CPU (float32)")
    ap.add_argument("--shapes", default="8192x4096x151936,16384x5120x152064", help="NxHxV,...")
    ap.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, ms")
    ap.add_argument("--rep", type=int, default=200, help="do_bench measurement, ms")
    ap.add_argument("--sweep", action="store_true",
                    help="tune instead: lead_fast triton for each row-kernel config x chunk size, against the floors")
    ap.add_argument("--sweep-blocks", default=",".join(SWEEP_BLOCKS), help="BLOCKxWARPS,... for --sweep")
    ap.add_argument("--sweep-chunks", default=",".join(map(str, SWEEP_CHUNKS)), help="chunk sizes for --sweep")
    ap.add_argument("--cpu", action="store_true", help="--shapes on CPU in float32 (e.g. the correction's cost there)")
    ap.add_argument("--out", default="bench_loss_head.json", help="JSON output path")
    args = ap.parse_args(argv)
    if args.quick:
        dev, dtype, shapes = torch.device("cpu"), torch.float32, [(32, 16, 300), (24, 16, 1000)]
    elif args.cpu:
        dev, dtype = torch.device("cpu"), torch.float32
        shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    else:
        if not torch.cuda.is_available():
            sys.exit("the full benchmark needs a CUDA GPU; use --quick for the CPU smoke run")
        dev, dtype = torch.device("cuda"), torch.bfloat16
        shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    import triton

    meta = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), torch=torch.__version__,
                triton=triton.__version__, device=torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or "cpu",
                dtype=str(dtype))
    rows = []
    for N, H, V in shapes:
        print(f"# N={N} H={H} V={V} {dtype} on {dev}", flush=True)
        if args.sweep:
            rows += run_sweep(N, H, V, dtype, dev, args.warmup, args.rep, args.sweep_blocks.split(","),
                              [int(c) for c in args.sweep_chunks.split(",")])
        else:
            rows += run_shape(N, H, V, dtype, dev, args.warmup, args.rep)
        with open(args.out, "w") as f:  # after every shape: a run cut short keeps what it measured
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    print(json.dumps(meta))
    print_table(fastest_first(rows) if args.sweep else rows)
    return rows


if __name__ == "__main__":
    main()
