"""The step-time model of docs/design.md ("Colocated or disaggregated at scale"): seconds per GRPO-LEAD step
at the official recipe's lengths on 8-64 GPUs, colocated vs disaggregated (max_staleness 0 and 1, the best
split of GPUs between generating and training). A model, not a measurement: every input is an assumption,
named here and settable on the command line.

    python benchmarks/step_time_model.py
    python benchmarks/step_time_model.py --gen-tok-s 3000 --mean-len 4000
"""

from __future__ import annotations

import argparse
import json


def step_times(gpus: int, a) -> dict:
    """Seconds per step for each mode on ``gpus`` GPUs."""
    responses = a.prompts * a.n
    gen_tokens = responses * a.mean_len
    train_tokens = responses * (a.mean_len + a.prompt_len)
    tail = a.max_len / a.seq_tok_s            # the longest response decodes one token at a time

    def gen(g):
        return max(gen_tokens / (g * a.gen_tok_s), tail)

    def train(t):
        return train_tokens / (t * a.train_tok_s)

    colocated = gen(gpus) + train(gpus) + a.colocated_sync_s
    best0 = min((gen(g) + train(gpus - g) + a.broadcast_s, g) for g in range(1, gpus))
    best1 = min((max(gen(g), train(gpus - g)) + a.broadcast_s, g) for g in range(1, gpus))
    return dict(gpus=gpus, gen_s=gen(gpus), train_s=train(gpus), colocated_s=colocated,
                staleness0_s=best0[0], staleness0_gen_gpus=best0[1],
                staleness1_s=best1[0], staleness1_gen_gpus=best1[1], speedup1=colocated / best1[0])


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=32, help="prompts per step (the grpo_lead_14b preset)")
    ap.add_argument("--n", type=int, default=8, help="responses per prompt")
    ap.add_argument("--max-len", type=int, default=12288, help="longest response, tokens")
    ap.add_argument("--mean-len", type=int, default=6000, help="mean response length, tokens (assumed)")
    ap.add_argument("--prompt-len", type=int, default=300, help="mean prompt length, tokens (assumed)")
    ap.add_argument("--gen-tok-s", type=float, default=2000.0,
                    help="generation tokens/s per GPU, 14B bf16, long contexts, many sequences (assumed)")
    ap.add_argument("--seq-tok-s", type=float, default=40.0,
                    help="decode tokens/s of one sequence in a full batch (assumed); sets the tail")
    ap.add_argument("--train-tok-s", type=float, default=3000.0,
                    help="training tokens/s per GPU, 14B, FSDP2, activation checkpointing (assumed: ~40%% MFU)")
    ap.add_argument("--colocated-sync-s", type=float, default=10.0,
                    help="colocated weight sync plus engine sleep/wake per step (assumed)")
    ap.add_argument("--broadcast-s", type=float, default=5.0,
                    help="28 GB of bf16 weights from the trainer group to the rollout GPUs (assumed: ~50 GB/s + gather)")
    ap.add_argument("--gpus", default="8,16,32,64")
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    rows = [step_times(int(g), a) for g in a.gpus.split(",")]
    print(f"{'GPUs':>5} {'gen':>6} {'train':>6} {'colocated':>10} {'disagg s0':>10} {'(gen GPUs)':>10} "
          f"{'disagg s1':>10} {'(gen GPUs)':>10} {'s1 speedup':>10}")
    for r in rows:
        print(f"{r['gpus']:>5} {r['gen_s']:>6.0f} {r['train_s']:>6.0f} {r['colocated_s']:>10.0f} "
              f"{r['staleness0_s']:>10.0f} {r['staleness0_gen_gpus']:>10} {r['staleness1_s']:>10.0f} "
              f"{r['staleness1_gen_gpus']:>10} {r['speedup1']:>9.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(assumptions=vars(a), rows=rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()
