"""The embedded task trained on CUDA the way a GPU user runs it, and its first step checked against float32
on CPU.

    python benchmarks/cuda_grpo_run.py --out results/grpo            # CUDA: bf16, Triton head, packed rows
    python benchmarks/cuda_grpo_run.py --quick --out /tmp/g -- --model DIR --run.warm_start_steps 0   # CPU (CI)

One run: torchrun with one rank (``--ranks``; NCCL on CUDA), the tiny preset (its warm start included) for
``--steps`` steps with model.dtype bfloat16 (FSDP2 mixed precision, float32 master weights),
optim.loss_backend triton and optim.packing on, saving step 1's update inputs (run.save_samples 1). Then ``lead_fast.replay`` computes
step 1 again: in float32 with the torch head on CPU (the reference), and once more as the run did it (same
device, backend and dtype: is the step reproducible?). Prints the run's steps, evals and times and the
first-step comparison, writes JSON, and exits 1 when the run fails or its step 1 differs from the reference
by more than ``--rtol`` in loss, entropy or gradient norm (bfloat16 against float32: 0.05 by default).

On-policy the loss's value is the advantage-weighted token mean whatever the weights, so it checks the batch
and the aggregation; the entropy and the gradient norm check the model's numbers (docs: lead_fast/replay.py).
``--quick`` (CPU, CI): float32, the torch head, 2 steps, --rtol 1e-4, no second replay.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("TRITON_INTERPRET", None)      # CUDA runs the real kernel; on CPU --quick uses the torch head
    return env


def train(out: str, steps: int, cuda: bool, ranks: int, extra: list[str]) -> tuple[int, float]:
    """The training run, its output streamed (and kept in OUT/train.log); returns (exit code, seconds)."""
    precision = (["--model.dtype", "bfloat16", "--optim.loss_backend", "triton"] if cuda
                 else ["--model.dtype", "float32", "--optim.loss_backend", "torch"])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
           "-m", "lead_fast.train", "--preset", "tiny", "--output-dir", os.path.join(out, "run"),
           "--run.overwrite", "true",
           "--max-steps", str(steps), "--run.save_samples", "1", "--optim.packing", "on", *precision, *extra]
    print(" ".join(cmd[3:]), flush=True)
    t0 = time.time()
    with open(os.path.join(out, "train.log"), "w") as log:
        p = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in p.stdout:
            log.write(line)
            if not line.startswith(("Loading weights", "Writing model")):      # progress bars
                print(f"  {line}", end="", flush=True)
        code = p.wait()
    return code, time.time() - t0


def replay(out: str, device: str, backend: str, dtype: str, rtol: float, name: str) -> dict:
    """``lead_fast.replay`` of step 1 in its own process; its JSON (with ``exit``), or the failure."""
    path = os.path.join(out, f"replay_{name}.json")
    cmd = [sys.executable, "-m", "lead_fast.replay", "--run-dir", os.path.join(out, "run"), "--device", device,
           "--backend", backend, "--dtype", dtype, "--rtol", str(rtol), "--json", path]
    p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True)
    print(p.stdout, end="", flush=True)
    if not os.path.exists(path):
        print(p.stderr[-3000:], flush=True)
        return dict(name=name, exit=p.returncode, error=p.stderr.strip().splitlines()[-1:] or ["(no output)"])
    with open(path) as f:
        return dict(json.load(f), name=name, exit=p.returncode)


def summarize(out: str) -> dict:
    """Steps finished, mean step / rollout / update seconds after the first (compilation) step, evals."""
    path = os.path.join(out, "run", "metrics.jsonl")
    rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    train_rows = [r for r in rows if r["step"] > 0]
    later = train_rows[1:] or train_rows

    def mean(k):
        vals = [r[k] for r in later if r.get(k) is not None]
        return sum(vals) / len(vals) if vals else None

    first = train_rows[0] if train_rows else {}
    return dict(steps=len(train_rows), first_step={k: first.get(k) for k in ("loss", "entropy", "grad_norm",
                                                                              "accuracy", "time/step_s")},
                mean_after_first={k: mean(f"time/{k}_s") for k in ("step", "rollout", "update", "sync")},
                evals={r["step"]: r["eval/accuracy"] for r in rows if r.get("eval/accuracy") is not None},
                eval_length={r["step"]: r["eval/response_length"] for r in rows
                             if r.get("eval/response_length") is not None})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "cuda_grpo_run"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--ranks", type=int, default=1, help="training ranks (CUDA: one per GPU); the replay is one "
                    "process whatever the run's ranks")
    ap.add_argument("--rtol", type=float, default=None, help="step 1 against float32 on CPU (default: 0.05 on "
                    "CUDA, bfloat16 against float32; 1e-4 with --quick)")
    ap.add_argument("--quick", action="store_true", help="CPU: float32, torch head, 2 steps (CI)")
    ap.add_argument("extra", nargs="*", help="more trainer overrides, after --")
    a = ap.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available() and not a.quick
    if not cuda and not a.quick:
        print("no CUDA device: run with --quick for the CPU version", file=sys.stderr)
        return 2
    steps = 2 if a.quick else a.steps
    rtol = a.rtol if a.rtol is not None else (0.05 if cuda else 1e-4)
    os.makedirs(a.out, exist_ok=True)
    code, seconds = train(a.out, steps, cuda, a.ranks, a.extra)
    result = dict(device=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__, ranks=a.ranks,
                  steps_asked=steps,
                  train_exit=code, train_s=seconds, **summarize(a.out), rtol=rtol, replays=[])
    if result["steps"]:
        result["replays"].append(replay(a.out, "cpu", "torch", "float32", rtol, "cpu_torch_float32"))
        if cuda:     # the same step again as the run did it: how reproducible is it on its own?
            result["replays"].append(replay(a.out, "cuda", "triton", "bfloat16", rtol, "cuda_triton_bfloat16"))
    print(f"\nrun: exit {code}, {result['steps']}/{steps} steps in {seconds:.1f} s (warm start and evals included); "
          f"after step 1 a step took {result['mean_after_first']['step'] or float('nan'):.2f} s (rollout "
          f"{result['mean_after_first']['rollout'] or float('nan'):.2f}, update "
          f"{result['mean_after_first']['update'] or float('nan'):.2f})")
    print("eval pass@1 by step: " + ", ".join(f"{k}: {v:.3f}" for k, v in result["evals"].items()))
    print(f"\nstep 1 | run ({'CUDA bf16 triton' if cuda else 'CPU float32 torch'}) | "
          + " | ".join(r["name"] for r in result["replays"]))
    for k in ("loss", "entropy", "grad_norm"):
        cells = []
        for r in result["replays"]:
            row = next((c for c in r.get("comparison", []) if c["metric"] == k), None)
            cells.append("failed" if row is None else f"{row['replay']:.6g} ({row['rel_diff']:.1e})")
        print(f"{k} | {result['first_step'][k]} | " + " | ".join(cells))
    # a match needs the three numbers compared: a step that updated nothing (every group dropped) logs none
    ref = result["replays"][0] if result["replays"] else {}
    checked = [c["within"] for c in ref.get("comparison", []) if c["metric"] in ("loss", "entropy", "grad_norm")]
    result["first_step_matches"] = ref.get("exit") == 0 and len(checked) == 3 and all(checked)
    verdict = ("yes" if result["first_step_matches"] else
               "NOT CHECKED (step 1 updated nothing, or the replay failed)" if len(checked) < 3 or None in checked
               else "NO")
    print(f"first step within {rtol:g} of float32 on CPU: {verdict}")
    with open(os.path.join(a.out, "cuda_grpo_run.json"), "w") as f:
        json.dump(result, f, indent=1)
    return 0 if code == 0 and result["steps"] == steps and result["first_step_matches"] else 1


if __name__ == "__main__":
    sys.exit(main())
