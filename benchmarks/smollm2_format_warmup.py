"""How far a short supervised format warm-up takes SmolLM2-135M-Instruct on sums (groundwork for its preset).

    python benchmarks/smollm2_format_warmup.py                 # 30 steps, batch 16, lr 2e-5 (the preset's)
    python benchmarks/smollm2_format_warmup.py --steps 0       # the model as shipped

Builds (or reuses) the model with ``lead_fast.pretrained``, runs the smollm2 preset's answer-format warm-up
(``lead_fast.warm_start.format_warm_up``: ``--steps`` supervised steps on the 100 one-digit sums, half answered
``a + b = c. The answer is \\boxed{c}.`` and half restated and checked; chat template, the task's
instruction, loss on the response and ``<|im_end|>`` only), then samples ``--n`` responses at
``--temperature`` for 16 problems of each operand range with the transformers engine and grades them with
lead_fast's grader. Each row: accuracy, the fraction of responses with a ``\\boxed{}``, how many of the 16
groups carry signal (some but not all of their responses correct: GRPO learns only from those) and the mean
length. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

RANGES = ((0, 10), (10, 50), (50, 100), (10, 100), (100, 500))


def main(argv=None) -> list[dict]:
    from lead_fast.algo import grade_batch
    from lead_fast.data import build_prompt
    from lead_fast.task import TASK_INSTRUCTION
    from lead_fast.warm_start import format_warm_up
    from lead_fast.config import RolloutConfig
    from lead_fast.model import load_tokenizer
    from lead_fast.pretrained import model_dir
    from lead_fast.rollout import SamplingSettings, make_engine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--n", type=int, default=8, help="samples per problem")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--out", default="smollm2_format_warmup.json")
    args = ap.parse_args(argv)
    src = model_dir("smollm2", log=lambda m: print(m, file=sys.stderr))
    tok = load_tokenizer(src)
    t0 = time.time()
    work = tempfile.mkdtemp()
    warm = format_warm_up(src, os.path.join(work, "warm"), steps=args.steps, seed=0, batch=args.batch, lr=args.lr,
                          log=lambda m: print(m, file=sys.stderr)) if args.steps else src
    warm_s = time.time() - t0
    rows, n = [], args.n
    engine = make_engine(RolloutConfig(engine="hf"), warm, device=torch.device("cpu"), dtype=torch.float32,
                         tokenizer=tok, seed=0, max_model_len=256)
    for lo, hi in RANGES:
        r = random.Random(5)
        problems = [(r.randrange(lo, hi), r.randrange(lo, hi)) for _ in range(16)]
        prompts = [build_prompt(tok, f"What is {a} + {b}?", TASK_INSTRUCTION, "auto") for a, b in problems]
        groups = engine.generate(prompts, SamplingSettings(n=n, temperature=args.temperature, max_new_tokens=64,
                                                           seed=1))
        texts = [tok.decode(c.token_ids, skip_special_tokens=True) for g in groups for c in g]
        outcomes = grade_batch(texts, [str(a + b) for a, b in problems for _ in range(n)])
        correct = [sum(o == 1 for o in outcomes[n * i:n * i + n]) for i in range(16)]
        rows.append(dict(operands=f"[{lo}, {hi})", accuracy=sum(correct) / (16 * n),
                         boxed=sum("\\boxed{" in t for t in texts) / (16 * n),
                         groups_with_signal=sum(0 < c < n for c in correct),
                         length=sum(len(c.token_ids) for g in groups for c in g) / (16 * n)))
        print(f"sample [{lo}, {hi}): {texts[0]!r}", file=sys.stderr)
    engine.close()
    shutil.rmtree(work, ignore_errors=True)
    meta = dict(steps=args.steps, lr=args.lr, batch=args.batch, n=n, temperature=args.temperature,
                warm_up_s=round(warm_s, 1), threads=torch.get_num_threads(), torch=torch.__version__)
    print(f"\nSmolLM2-135M-Instruct after {args.steps} format steps ({warm_s:.0f} s); "
          f"{n} samples at T {args.temperature} for 16 problems per range")
    print(f"{'operands':12} {'accuracy':>8} {'boxed':>6} {'groups w/ signal':>17} {'length':>7}")
    for r in rows:
        print(f"{r['operands']:12} {r['accuracy']:8.3f} {r['boxed']:6.2f} {r['groups_with_signal']:>14}/16 "
              f"{r['length']:7.1f}")
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
