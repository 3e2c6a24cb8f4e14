"""Colocated vs disaggregated, side by side on the same work and the same cores: one full training run each
(real torchrun, gloo), then steps per hour, seconds per step, time/overlap_frac and the eval curve.

    python benchmarks/bench_overlap.py                        # the default task (tiny preset), 3 runs
    python benchmarks/bench_overlap.py --preset smollm2 --engine vllm --max-steps 10   # in the vLLM env
    python benchmarks/bench_overlap.py --quick                # 2 steps each (CI: it runs, it writes)

Runs: colocated on ``--ranks`` ranks; disaggregated on 1 rollout + ``--ranks - 1`` trainer ranks at
max_staleness 0 and 1 (``--staleness``). Each run gets ``OMP_NUM_THREADS=1`` per rank, as torchrun sets, so
every run has the same cores. Steps per hour count the training loop from the first row after the step-0
eval to the last row (evals and checkpoints included: both modes pay them). ``rollout.logprobs`` is on in
every run (staleness 1 needs it; the others then log the same mismatch metrics). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")


def run(name: str, nproc: int, args: list[str], out: str) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "lead_fast.train", *args, "--output-dir", out, "--run.overwrite"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", VLLM_ENABLE_V1_MULTIPROCESSING="0")
    env.pop("TRITON_INTERPRET", None)
    print(f"[{name}] {' '.join(cmd[3:])}", flush=True)
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode:
        raise SystemExit(f"[{name}] failed (exit {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    train = [r for r in rows if r["step"] > 0]
    start = next((r["time/elapsed_s"] for r in rows if r["step"] == 0), 0.0)
    loop_s = train[-1]["time/elapsed_s"] - start
    evals = {r["step"]: r["eval/accuracy"] for r in rows if r.get("eval/accuracy") is not None}
    mean = lambda k: sum(r.get(k) or 0.0 for r in train) / len(train)   # noqa: E731
    return dict(name=name, ranks=nproc, wall_s=wall, loop_s=loop_s, steps=len(train),
                steps_per_hour=3600 * len(train) / loop_s, s_per_step=loop_s / len(train),
                rollout_s=mean("time/rollout_s"), update_s=mean("time/update_s"), wait_s=mean("time/wait_s"),
                overlap_frac=mean("time/overlap_frac"), staleness=mean("rollout/staleness"),
                eval=evals, final_eval=evals[max(evals)] if evals else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--engine", default="hf", choices=["hf", "vllm"])
    ap.add_argument("--ranks", type=int, default=2, help="ranks of every run (the same cores)")
    ap.add_argument("--staleness", default="0,1", help="max_staleness values of the disaggregated runs")
    ap.add_argument("--max-steps", type=int, default=0, help="0: the preset's")
    ap.add_argument("--quick", action="store_true", help="2 steps each, a small eval (CI)")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "bench_overlap"))
    ap.add_argument("--json", default="bench_overlap.json")
    ap.add_argument("extra", nargs="*", help="more trainer overrides, after --")
    a = ap.parse_args()

    common = ["--preset", a.preset, "--rollout.engine", a.engine, "--rollout.logprobs", "true", *a.extra]
    if a.max_steps:
        common += ["--max-steps", str(a.max_steps)]
    if a.quick:
        common += ["--max-steps", "2", "--eval-every", "2", "--data.eval_size", "8", "--rollout.eval_n", "1",
                   "--optim.prompts_per_step", "8"]
    results = [run(f"colocated {a.ranks}", a.ranks, common, os.path.join(a.out, "colocated"))]
    base_model = os.path.join(a.out, "colocated", "base_model")
    if os.path.isdir(base_model):     # the first run's warm start: the others start from the same weights
        common += ["--model", base_model, "--run.warm_start_steps", "0"]
    for s in (int(x) for x in a.staleness.split(",")):
        results.append(run(f"disaggregated 1+{a.ranks - 1}, staleness {s}", a.ranks,
                           [*common, "--rollout.mode", "disaggregated", "--rollout.max_staleness", str(s)],
                           os.path.join(a.out, f"disaggregated_s{s}")))
    base = results[0]["steps_per_hour"]
    print(f"\n{'run':<34} {'s/step':>7} {'steps/h':>8} {'vs colo':>8} {'rollout':>8} {'update':>7} {'wait':>6} "
          f"{'overlap':>8} {'stale':>6}  eval (step: pass@1)")
    for r in results:
        r["vs_colocated"] = r["steps_per_hour"] / base
        curve = " ".join(f"{k}:{v:.3f}" for k, v in sorted(r["eval"].items()))
        print(f"{r['name']:<34} {r['s_per_step']:>7.2f} {r['steps_per_hour']:>8.0f} {r['vs_colocated']:>7.2f}x "
              f"{r['rollout_s']:>8.2f} {r['update_s']:>7.2f} {r['wait_s']:>6.2f} {r['overlap_frac']:>8.2f} "
              f"{r['staleness']:>6.2f}  {curve}")
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(dict(preset=a.preset, engine=a.engine, ranks=a.ranks, extra=a.extra, cpus=os.cpu_count(),
                       results=results), f, indent=1)
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
