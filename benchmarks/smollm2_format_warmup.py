"""How far a short supervised format warm-up takes SmolLM2-135M-Instruct on sums (groundwork for its preset).

    python benchmarks/smollm2_format_warmup.py                 # 30 steps, batch 16, lr 2e-5
    python benchmarks/smollm2_format_warmup.py --steps 0       # the model as shipped

Builds (or reuses) the model with ``lead_fast.pretrained``, trains ``--steps`` supervised steps on the 100
one-digit sums written as ``a + b = c. The answer is \\boxed{c}.`` (chat template, the default GRPO-LEAD
instruction, loss on the response and ``<|im_end|>`` only), then samples 4 responses at temperature 0.7 for
16 problems of each operand range with the transformers engine and grades them with lead_fast's grader.
Each row: accuracy, the fraction of responses with a ``\\boxed{}``, how many of the 16 groups carry signal
(some but not all of their 4 responses correct: GRPO learns only from those) and the mean length.
Prints a table, writes JSON.
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

RANGES = ((0, 10), (10, 50), (50, 100), (100, 500))
INSTRUCTION = "Put the final answer within \\boxed{}."


def main(argv=None) -> list[dict]:
    from transformers import AutoModelForCausalLM

    from lead_fast.algo import grade_batch
    from lead_fast.data import build_prompt
    from lead_fast.model import load_tokenizer
    from lead_fast.pretrained import model_dir
    from lead_fast.rollout import SamplingSettings, make_engine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default="smollm2_format_warmup.json")
    args = ap.parse_args(argv)
    src = model_dir("smollm2", log=lambda m: print(m, file=sys.stderr))
    tok = load_tokenizer(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    end = tok.convert_tokens_to_ids("<|im_end|>")

    def example(a, b):
        prompt = build_prompt(tok, f"What is {a} + {b}?", INSTRUCTION, "auto")
        reply = tok(f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}.", add_special_tokens=False)["input_ids"]
        return prompt, reply + [end]

    train = [example(a, b) for a in range(10) for b in range(10)]
    rng = random.Random(0)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    t0, loss = time.time(), float("nan")
    model.train()
    for step in range(args.steps):
        rows = [train[rng.randrange(len(train))] for _ in range(args.batch)]
        T = max(len(p) + len(r) for p, r in rows)
        ids = torch.full((args.batch, T), tok.pad_token_id)
        labels = torch.full((args.batch, T), -100)
        mask = torch.zeros((args.batch, T), dtype=torch.long)
        for i, (p, r) in enumerate(rows):
            ids[i, :len(p) + len(r)] = torch.tensor(p + r)
            labels[i, len(p):len(p) + len(r)] = torch.tensor(r)
            mask[i, :len(p) + len(r)] = 1
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = out.loss.item()
        print(f"step {step + 1}/{args.steps} loss {loss:.4f}", file=sys.stderr, flush=True)
    warm_s = time.time() - t0
    model.eval()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        tok.save_pretrained(d)
        shutil.copy(os.path.join(src, "generation_config.json"), d)
        engine = make_engine("hf", d, device=torch.device("cpu"), dtype=torch.float32, tokenizer=tok, seed=0,
                             max_model_len=256)
        for lo, hi in RANGES:
            r = random.Random(5)
            problems = [(r.randrange(lo, hi), r.randrange(lo, hi)) for _ in range(16)]
            prompts = [build_prompt(tok, f"What is {a} + {b}?", INSTRUCTION, "auto") for a, b in problems]
            groups = engine.generate(prompts, SamplingSettings(n=4, temperature=0.7, max_new_tokens=48, seed=1))
            texts = [tok.decode(c.token_ids, skip_special_tokens=True) for g in groups for c in g]
            outcomes = grade_batch(texts, [str(a + b) for a, b in problems for _ in range(4)])
            correct = [sum(o == 1 for o in outcomes[4 * i:4 * i + 4]) for i in range(16)]
            rows.append(dict(operands=f"[{lo}, {hi})", accuracy=sum(correct) / 64,
                             boxed=sum("\\boxed{" in t for t in texts) / 64,
                             groups_with_signal=sum(0 < c < 4 for c in correct),
                             length=sum(len(c.token_ids) for g in groups for c in g) / 64))
        engine.close()
    meta = dict(steps=args.steps, lr=args.lr, batch=args.batch, warm_up_s=round(warm_s, 1), last_loss=loss,
                threads=torch.get_num_threads(), torch=torch.__version__)
    print(f"\nSmolLM2-135M-Instruct after {args.steps} format steps ({warm_s:.0f} s, last loss {loss:.4f}); "
          "4 samples at T 0.7 for 16 problems per range")
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
