"""The rollout-trainer mismatch on a real model: an engine samples with its own numerics (and dtype), the
trainer scores the same tokens in float32, and the rollout correction's statistics are reported for each
engine and engine dtype.

    python benchmarks/bench_mismatch.py                                  # SmolLM2-135M-Instruct, every engine here
    python benchmarks/bench_mismatch.py --engines hf --dtypes float32 --quick   # the tiny demo model (CI)

Work: the smollm2 preset's task (sums of two-digit numbers through the chat template), ``--prompts`` prompts
x ``--n`` responses x at most ``--max-new-tokens`` tokens at temperature ``--temperature``, top-p 1. The
trainer is lead_fast's loss head in float32 at the same temperature. Per engine and dtype: the mean
|log-prob gap| per token, ``rollout/mismatch_kl`` (the k3 estimate of KL(rollout || trainer) per token), and
what each correction would do at cap 2 and low 0.5: the token-level truncated fraction and mean weight, the
token-level masked fraction, the fraction of responses whose product of ratios exceeds the cap, and the
fraction of responses the geometric-mean rejection drops (``algo.rollout_rejection geometric``). vLLM runs where it is installed (its CPU build: in
its own environment, README "Rollout engines"). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

CAP, LOW = 2.0, 0.5


def trainer_logprobs(model_dir: str, prompts, completions, temperature: float) -> list[torch.Tensor]:
    """The float32 trainer's log-prob of every sampled token (the loss head's forward-only pass)."""
    from lead_fast.model import PolicyWithHead, RowInputs, load_model
    from lead_fast.ops import LossParams, TokenInputs

    policy = PolicyWithHead(load_model(model_dir, torch.float32, torch.device("cpu")), backend="torch")
    out = []
    with torch.no_grad():
        for p, c in zip(prompts, completions):
            ids = torch.tensor([p + c.token_ids])
            rows = RowInputs(input_ids=ids, attention_mask=torch.ones_like(ids),
                             hidden_rows=torch.arange(len(p) - 1, len(p) - 1 + len(c.token_ids)))
            out.append(policy(rows, TokenInputs(targets=torch.tensor(c.token_ids)),
                              LossParams(temperature=temperature), mode="logprobs").double())
    return out


def mismatch_stats(trainer: list[torch.Tensor], engine: list[list[float]]) -> dict:
    """The correction's statistics over responses (lists of per-token log-probs), at cap CAP and low LOW."""
    logr = [t - torch.tensor(e, dtype=torch.float64) for t, e in zip(trainer, engine)]   # log(trainer / engine)
    flat = torch.cat(logr)
    ratio = flat.exp()
    seq_sum = torch.stack([x.sum() for x in logr])
    seq_geo = torch.stack([x.mean().exp() for x in logr])
    return dict(tokens=int(flat.numel()), responses=len(logr), logprob_gap=float(flat.abs().mean()),
                mismatch_kl=float((ratio - 1 - flat).mean()), max_abs_log_ratio=float(flat.abs().max()),
                token_truncated_frac=float((ratio > CAP).double().mean()),
                token_weight_mean=float(ratio.clamp(max=CAP).mean()),
                token_masked_frac=float(((ratio < LOW) | (ratio > CAP)).double().mean()),
                seq_truncated_frac=float((seq_sum > math.log(CAP)).double().mean()),
                seq_masked_frac=float(((seq_geo < LOW) | (seq_geo > CAP)).double().mean()))


def run(engine_name: str, dtype: str, model_dir: str, prompts, a) -> dict:
    from lead_fast.config import RolloutConfig
    from lead_fast.model import load_tokenizer
    from lead_fast.rollout import EngineMemory, SamplingSettings, make_engine

    row = dict(engine=engine_name, dtype=dtype)
    if engine_name == "vllm":
        from lead_fast.rollout.vllm_check import vllm_import_problem

        if vllm_import_problem():
            return dict(row, status="missing: vLLM does not import here")
    tok = load_tokenizer(model_dir)
    longest = max(map(len, prompts)) + a.max_new_tokens
    engine = make_engine(RolloutConfig(engine=engine_name, logprobs=True), model_dir, device=torch.device("cpu"),
                         dtype=getattr(torch, dtype), tokenizer=tok, seed=0, max_model_len=longest,
                         memory=EngineMemory(batch_tokens=len(prompts) * a.n * longest), colocated=False)
    t0 = time.time()
    groups = engine.generate(prompts, SamplingSettings(n=a.n, temperature=a.temperature,
                                                       max_new_tokens=a.max_new_tokens, seed=0))
    row["generate_s"] = time.time() - t0
    engine.close()
    flat = [c for g in groups for c in g]
    per_prompt = [p for p, g in zip(prompts, groups) for _ in g]
    trainer = trainer_logprobs(model_dir, per_prompt, flat, a.temperature)
    return dict(row, status="ok", **mismatch_stats(trainer, [c.logprobs for c in flat]))


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="vllm,hf")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--quick", action="store_true", help="the embedded tiny model, 4 prompts x 2 x 16 tokens")
    ap.add_argument("--out", default="bench_mismatch.json")
    a = ap.parse_args(argv)
    from lead_fast.data import build_prompt
    from lead_fast.task import TASK_INSTRUCTION, synthetic_problems
    from lead_fast.warm_start import build_embedded_model
    from lead_fast.model import load_tokenizer

    torch.set_num_threads(os.cpu_count() or 1)
    if a.quick:
        import tempfile

        model_dir = build_embedded_model(os.path.join(tempfile.mkdtemp(), "tiny"), steps=20, seed=0,
                                         log=lambda m: None)
        a.prompts, a.n, a.max_new_tokens, label = 4, 2, 16, "embedded tiny model"
        problems = synthetic_problems((0, 20))[: a.prompts]
    else:
        from lead_fast.pretrained import model_dir as pretrained

        model_dir, label = pretrained("smollm2", log=lambda m: print(m, file=sys.stderr)), "SmolLM2-135M-Instruct"
        problems = synthetic_problems((10, 100))[: a.prompts]
    tok = load_tokenizer(model_dir)
    prompts = [build_prompt(tok, p.problem, TASK_INSTRUCTION, "auto") for p in problems]
    rows = []
    for engine_name in a.engines.split(","):
        for dtype in a.dtypes.split(","):
            print(f"[{label}] {engine_name} {dtype} ...", file=sys.stderr, flush=True)
            rows.append(run(engine_name, dtype, model_dir, prompts, a))
    print(f"\n{label}: {a.prompts} prompts x {a.n} x <= {a.max_new_tokens} tokens, T {a.temperature}; trainer float32; "
          f"cap {CAP}, low {LOW}")
    print(f"{'engine':6} {'dtype':9} {'tokens':>6} {'|gap|':>9} {'mismatch_kl':>11} {'tok trunc':>9} {'tok w':>7} "
          f"{'tok mask':>8} {'seq trunc':>9} {'seq mask':>8}")
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['engine']:6} {r['dtype']:9} {r['status']}")
            continue
        print(f"{r['engine']:6} {r['dtype']:9} {r['tokens']:6d} {r['logprob_gap']:9.2e} {r['mismatch_kl']:11.2e} "
              f"{r['token_truncated_frac']:9.4f} {r['token_weight_mean']:7.4f} {r['token_masked_frac']:8.4f} "
              f"{r['seq_truncated_frac']:9.4f} {r['seq_masked_frac']:8.4f}")
    with open(a.out, "w") as f:
        json.dump(dict(model=label, prompts=a.prompts, n=a.n, max_new_tokens=a.max_new_tokens,
                       temperature=a.temperature, cap=CAP, low=LOW, torch=torch.__version__, rows=rows), f, indent=1)
    print(f"wrote {a.out}")
    return rows


if __name__ == "__main__":
    main()
