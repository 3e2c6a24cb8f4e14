"""One full GRPO training step (forward, backward, optimizer) on one device, the usual way and lead_fast's.

    python benchmarks/bench_train_step.py                 # CUDA: Qwen2.5-1.5B dims, 16 responses of 500..8000
    python benchmarks/bench_train_step.py --layers 8      #   tokens after 200-token prompts, bf16
    python benchmarks/bench_train_step.py --quick         # tiny model on CPU: keeps this script from rotting

Every row starts from the same weights; its first step's loss is reported, and they must agree.
Rows: (a) the usual path: right-padded micro-batches, the model's full logits, a torch GRPO loss over
fp32 log-softmax; (b) padded + lead_fast's fused loss head; (c) packed + fused head; (d) (c) + Liger's
rope/RMSNorm/SwiGLU (CUDA only); (e) (d) + activation checkpointing. (b)-(e) run lead_fast's own update
(``lead_fast.update.Updater`` on an FSDP2-wrapped world of one). Each row: median step time, real
tokens/s, MFU (6 x parameters x tokens against the device's dense bf16 peak; attention not counted),
peak memory. Prints a table, writes JSON.
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

GiB = 2**30
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}   # dense bf16 FLOP/s (NVIDIA's published SXM figures)


def build_model_dir(path: str, *, hidden, layers, heads, kv_heads, inter, vocab, seed=0) -> str:
    """A random-init Qwen2 model saved as a directory (what the trainer loads)."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config
    from tokenizers import Tokenizer, models

    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=16384,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1}, "<pad>")),
                                  eos_token="<eos>", pad_token="<pad>")
    tok.save_pretrained(path)
    return path


def make_samples(n, prompt_len, lo, hi, vocab, seed=0):
    from lead_fast.update import Sample

    g = torch.Generator().manual_seed(seed)
    lengths = [round(lo + (hi - lo) * i / max(n - 1, 1)) for i in range(n)]
    return [Sample(torch.randint(2, vocab, (prompt_len,), generator=g).tolist(),
                   torch.randint(2, vocab, (L,), generator=g).tolist(),
                   float(torch.randn(1, generator=g)), float(torch.rand(1, generator=g))) for L in lengths]


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def usual_step(lm, opt, samples, budget, device, temperature=1.0):
    """The usual path: padded micro-batches, full logits, fp32 log-softmax, clipped GRPO loss (on-policy,
    token mean over the batch), backward, clip, AdamW."""
    from lead_fast.update import collate, plan_micro_batches

    total, loss = sum(len(s.response) for s in samples), 0.0
    for batch in plan_micro_batches(samples, budget):
        mb = collate(batch, 0, device, 1.0 / total)
        rows, tok = mb.rows, mb.tokens
        logits = lm(input_ids=rows.input_ids, attention_mask=rows.attention_mask, use_cache=False).logits  # (B, T, V)
        z = logits.reshape(-1, logits.shape[-1]).index_select(0, rows.hidden_rows).float() / temperature
        logp = torch.log_softmax(z, -1).gather(1, tok.targets[:, None]).squeeze(1)
        ratio = torch.exp(logp - logp.detach())
        adv = tok.advantages
        pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
        mb_loss = (pg * tok.token_weights).sum()
        mb_loss.backward()
        loss += float(mb_loss)
    torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return dict(loss=loss)


def run_row(name, model_dir, samples, device, dtype, budget, steps, *, usual=False, packing=True, liger="off",
            checkpointing=False):
    from lead_fast.model import PolicyWithHead, apply_liger_kernels, load_model, shard
    from lead_fast.ops import LossParams
    from lead_fast.update import Updater, UpdateSettings

    row = dict(method=name)
    if liger == "on" and device.type != "cuda":
        return dict(row, status="skipped: Liger's kernels need CUDA")
    if liger == "on":
        try:
            import liger_kernel  # noqa: F401
        except ImportError:
            return dict(row, status="missing: liger-kernel")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    lm = load_model(model_dir, torch.float32, device, "sdpa")
    if usual:
        lm = lm.to(dtype)
        if checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        opt = torch.optim.AdamW(lm.parameters(), lr=1e-6)
        step = lambda i: usual_step(lm, opt, samples, budget, device)  # noqa: E731
    else:
        apply_liger_kernels(lm, liger, device)
        policy = shard(PolicyWithHead(lm, backend="auto"), device, dtype, checkpointing)
        # the plain clipped GRPO loss (no difficulty weights), as row (a) computes it, at temperature 1
        settings = UpdateSettings(micro_batch_tokens=budget, packed=packing, reweight=False)
        opt = torch.optim.AdamW(policy.parameters(), lr=1e-6)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: 1.0)
        upd = Updater(policy, None, opt, sched, settings, LossParams(temperature=1.0), pad_id=0, device=device,
                      rank=0, world=1, log=lambda m: None)
        step = lambda i: upd.update([type(s)(s.prompt, s.response, s.advantage, s.correct_ratio)  # noqa: E731
                                     for s in samples], i)
    try:
        row["loss_first_step"] = step(0)["loss"]  # warm-up (allocator, kernels, autotune); same weights in every row
        _sync(device)
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            step(i + 1)
            _sync(device)
            times.append(time.perf_counter() - t0)
    except torch.OutOfMemoryError:
        return dict(row, status="out of memory")
    ms = statistics.median(times) * 1e3
    tokens = sum(len(s.prompt) + len(s.response) for s in samples)
    params = sum(p.numel() for p in lm.parameters())
    row.update(status="ok", step_ms=ms, tokens_per_s=tokens / (ms / 1e3), params=params)
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated() / GiB
        name_ = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name_), None)
        row["mfu"] = (6 * params * tokens / (ms / 1e3)) / peak if peak else None
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes on CPU")
    ap.add_argument("--layers", type=int, default=28, help="decoder layers (Qwen2.5-1.5B has 28)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per row (median reported)")
    ap.add_argument("--budget", type=int, default=16384, help="tokens per micro-batch")
    ap.add_argument("--out", default="bench_train_step.json")
    ap.add_argument("--model-dir", default=None, help="where to build the model (default: a temp dir)")
    args = ap.parse_args(argv)
    import tempfile

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    from lead_fast.distributed import setup_distributed

    _, _, device = setup_distributed()
    if args.quick or device.type != "cuda":
        dims = dict(hidden=64, layers=2, heads=4, kv_heads=2, inter=128, vocab=1000)
        shape = dict(n=4, prompt_len=8, lo=10, hi=60)
        dtype, budget, steps = torch.float32, 128, 1
    else:
        dims = dict(hidden=1536, layers=args.layers, heads=12, kv_heads=2, inter=8960, vocab=151936)
        shape = dict(n=16, prompt_len=200, lo=500, hi=8000)
        dtype, budget, steps = torch.bfloat16, args.budget, args.steps
    model_dir = args.model_dir or tempfile.mkdtemp(prefix="bench_train_step_")
    build_model_dir(model_dir, **dims)
    samples = make_samples(vocab=dims["vocab"], **shape)
    rows_spec = [
        ("(a) padded, full logits, torch loss", dict(usual=True)),
        ("(b) padded + fused head", dict(packing=False)),
        ("(c) packed + fused head", dict(packing=True)),
        ("(d) (c) + Liger kernels", dict(packing=True, liger="on")),
        ("(e) (d) + activation checkpointing", dict(packing=True, liger="on", checkpointing=True)),
    ]
    rows = []
    for name, kw in rows_spec:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        rows.append(dict(run_row(name, model_dir, samples, device, dtype, budget, steps, **kw), dims=dims, shape=shape))
        _write(args.out, rows, device)
    base = next((r for r in rows if r["method"].startswith("(a)") and r["status"] == "ok"), None)
    print(f"{'method':40} {'step ms':>9} {'tok/s':>10} {'x (a)':>6} {'MFU':>6} {'peak GiB':>9}  status")
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['method']:40} {'':>9} {'':>10} {'':>6} {'':>6} {'':>9}  {r['status']}")
            continue
        speed = r["tokens_per_s"] / base["tokens_per_s"] if base else float("nan")
        mfu = f"{r['mfu']:.2f}" if r.get("mfu") is not None else "-"
        peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib") is not None else "-"
        print(f"{r['method']:40} {r['step_ms']:9.1f} {r['tokens_per_s']:10.0f} {speed:6.2f} {mfu:>6} {peak:>9}  ok")
    import torch.distributed as dist

    dist.destroy_process_group()
    return rows


def _write(path, rows, device):
    meta = dict(date=datetime.now(timezone.utc).isoformat(), torch=torch.__version__, platform=platform.platform(),
                device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu")
    with open(path, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
