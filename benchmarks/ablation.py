"""Does each part of GRPO-LEAD earn its place? The paper's ladder, cumulative, against plain GRPO, seeded and
paired, on a generated task with a spread in difficulty.

    python benchmarks/ablation.py                       # 5 seeds x 5 configurations on the tiny model
    python benchmarks/ablation.py --seeds 2 --configs grpo,lead
    python benchmarks/ablation.py --quick               # 1 seed, 2 steps each: that the ladder runs (CI)

Configurations (``CONFIGS``), each the tiny preset on the mixed task (``--data.task mixed``: sums of 2, 3 and
4 numbers, tagged easy / medium / hard, whose warm start slips 20 / 50 / 80 % of the time, so the
warm-started model starts with a spread in accuracy by difficulty), differing only in the switches named:

1. ``grpo``: reward 1 for a correct answer, 0 otherwise; no length term, no reweighting;
2. ``+length``: the length-dependent accuracy reward (``algo.alpha`` 0.2, the tiny preset's);
3. ``+penalty``: the explicit penalty for wrong answers (-1 wrong or unanswered, -2 degenerate);
4. ``lead``: difficulty-aware advantage reweighting too (full GRPO-LEAD: the tiny preset itself);
5. ``grpo_trl``: GRPO with TRL's defaults (the ``grpo`` preset's algorithm settings: std + 1e-4, no group
   filter) on the same budget.

Everything else is the same for every configuration and was fixed before any run: the tiny preset's
hyper-parameters (16 prompts x 8 responses a step, up to 64 tokens, temperature 1, lr 2e-4, 80 steps), 96
held-out problems evaluated every 10 steps with 4 samples each (temperature 0.6). Seed k of every
configuration starts from the same warm start (the cache shares it) and samples the same prompts.

The report (printed, and written as JSON with every seed's eval curve; a PNG of the curves): final
held-out pass@1, pass@1 on the hard third, mean length of correct eval responses, generated tokens per step,
the first eval step at which pass@1 reaches ``--target``; mean and 95 % interval over seeds (Student's t),
and each adjacent pair's paired difference with its interval.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

COMMON = {"data.task": "mixed", "data.eval_size": 96, "rollout.eval_n": 4, "run.eval_every": 10, "run.save_every": 0}
"""What every configuration runs besides the tiny preset: the mixed task, a 96-problem eval every 10 steps."""
QUICK = {"run.warm_start_steps": 20, "run.eval_every": 2, "data.eval_size": 12, "optim.prompts_per_step": 4,
         "rollout.n": 4, "rollout.eval_n": 1}
"""--quick: a 20-step warm start, 4 prompts x 4 responses a step, a 12-problem eval."""

GRPO = {"algo.correct_reward": 1.0, "algo.incorrect_reward": 0.0, "algo.format_error_reward": 0.0,
        "algo.degenerate_reward": 0.0, "algo.alpha": 0.0, "algo.reweight": False}


def _grpo_trl() -> dict:
    """Rung 1 with the ``grpo`` preset's algorithm settings where they differ (TRL's defaults)."""
    from lead_fast.presets import preset_changes

    return {**GRPO, **{k: v for k, v in preset_changes("grpo").items() if k.startswith("algo.")}}


CONFIGS = {
    "grpo": GRPO,
    "+length": {**GRPO, "algo.alpha": 0.2},
    "+penalty": {**GRPO, "algo.alpha": 0.2, "algo.incorrect_reward": -1.0, "algo.format_error_reward": -1.0,
                 "algo.degenerate_reward": -2.0},
    "lead": {**GRPO, "algo.alpha": 0.2, "algo.incorrect_reward": -1.0, "algo.format_error_reward": -1.0,
             "algo.degenerate_reward": -2.0, "algo.reweight": True},
    "grpo_trl": None,       # config_values reads it from the grpo preset
}
LADDER = ("grpo", "+length", "+penalty", "lead")
"""The adjacent pairs the report compares, in order; and ``grpo_trl`` against ``grpo``."""


def config_values(name: str) -> dict:
    """The settings of configuration ``name`` (besides ``COMMON`` and the seed)."""
    return _grpo_trl() if name == "grpo_trl" else CONFIGS[name]


def flags(values: dict) -> list[str]:
    return [x for k, v in values.items() for x in (f"--{k}", str(v).lower() if isinstance(v, bool) else str(v))]


def run_one(name: str, seed: int, out: str, *, steps: int, nproc: int, cache: str, quick: bool,
            max_new_tokens: int) -> list[dict]:
    """One training run; returns its metrics rows."""
    values = {**COMMON, **(QUICK if quick else {}), **config_values(name), "run.seed": seed, "run.output_dir": out,
              "run.warm_start_cache": cache, "run.max_steps": steps, "rollout.max_new_tokens": max_new_tokens}
    cmd = [sys.executable, "-m", "lead_fast.launch", "--nproc", str(nproc), "--preset", "tiny", *flags(values)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-3000:] + p.stderr[-3000:])
        raise SystemExit(f"{name}, seed {seed}: exit {p.returncode}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def summarize_run(rows: list[dict], target: float, per_step: int) -> dict:
    """One run's numbers: the last eval's, tokens per step, the first eval step reaching ``target``."""
    rows = [{k: math.nan if v is None else v for k, v in r.items()} for r in rows]    # metrics.jsonl: NaN as null
    evals = [r for r in rows if "eval/pass@1" in r]
    steps = [r for r in rows if "response_length/mean" in r]
    last = evals[-1]
    reached = next((r["step"] for r in evals if r["eval/pass@1"] >= target), None)
    return {"pass1": last["eval/pass@1"], "pass1_hard": last.get("eval/pass@1/hard", math.nan),
            "pass1_easy": last.get("eval/pass@1/easy", math.nan),
            "correct_length": last.get("eval/correct_length", math.nan),
            "tokens_per_step": sum(r["response_length/mean"] for r in steps) / len(steps) * per_step,
            "steps_to_target": reached,
            "curve": [{k: r[k] for k in r if k == "step" or k.startswith("eval/")} for r in evals]}


# Student's t, two-sided 95 %, by degrees of freedom (1..30); beyond: 1.96
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def _num(x) -> float:
    return math.nan if x is None else x


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % interval (NaN with fewer than 2 values)."""
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, math.nan
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    t = _T95[len(xs) - 2] if len(xs) - 1 <= len(_T95) else 1.96
    return m, t * sd / math.sqrt(len(xs))


METRICS = (("pass1", "pass@1"), ("pass1_hard", "pass@1 hard"), ("pass1_easy", "pass@1 easy"),
           ("correct_length", "correct len"), ("tokens_per_step", "tokens/step"))


def report(results: dict[str, list[dict]], target: float) -> dict:
    """Means, intervals and paired differences; printed as tables."""
    names = [n for n in CONFIGS if n in results]
    summary = {}
    print(f"\n{'config':10} " + " ".join(f"{label:>17}" for _, label in METRICS) + f" {'steps to ' + str(target):>14}")
    for n in names:
        row = {}
        for key, _ in METRICS:
            row[key] = mean_ci([r[key] for r in results[n]])
        reached = [r["steps_to_target"] for r in results[n]]
        row["steps_to_target"] = mean_ci([s for s in reached if s is not None]) + (sum(s is None for s in reached),)
        summary[n] = row
        cells = " ".join(f"{row[k][0]:8.3f} ± {row[k][1]:6.3f}" for k, _ in METRICS)
        m, h, missed = row["steps_to_target"]
        print(f"{n:10} {cells} {m:6.1f} ± {h:4.1f}" + (f" ({missed} never)" if missed else ""))
    pairs = [(a, b) for a, b in zip(LADDER, LADDER[1:]) if a in results and b in results]
    if "grpo" in results and "grpo_trl" in results:
        pairs.append(("grpo", "grpo_trl"))
    diffs = {}
    if pairs:
        print("\npaired differences (second minus first, seed by seed; mean ± 95 % interval)")
        for a, b in pairs:
            d = {key: mean_ci([_num(rb[key]) - _num(ra[key]) for ra, rb in zip(results[a], results[b])])
                 for key, _ in METRICS}
            diffs[f"{b} - {a}"] = d
            print(f"{b + ' - ' + a:20} " + " ".join(f"{label} {d[key][0]:+.3f} ± {d[key][1]:.3f}"
                                                    for key, label in METRICS))
    return {"summary": summary, "paired": diffs}


def plot(results: dict[str, list[dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, runs in results.items():
        steps = [c["step"] for c in runs[0]["curve"]]
        for ax, key, title in zip(axes, ("eval/pass@1", "eval/pass@1/hard", "eval/correct_length"),
                                  ("held-out pass@1", "pass@1, hard third", "correct response length (tokens)")):
            ys = [sum(r["curve"][i].get(key, math.nan) for r in runs) / len(runs) for i in range(len(steps))]
            ax.plot(steps, ys, marker="o", label=name)
            ax.set_title(title)
            ax.set_xlabel("step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"any of {', '.join(CONFIGS)}")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--target", type=float, default=0.7, help="the pass@1 whose first eval step is reported")
    ap.add_argument("--max-new-tokens", type=int, default=64, help="the response budget of every configuration "
                    "(the tiny preset's 64 by default)")
    ap.add_argument("--quick", action="store_true", help="1 seed, 2 steps, a 20-step warm start: that it runs")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "ablation.json"))
    ap.add_argument("--work", default=None, help="where the runs go (default: a temporary directory, removed)")
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.steps, a.nproc = 1, 2, 1
    names = a.configs.split(",")
    for n in names:
        if n not in CONFIGS:
            raise SystemExit(f"--configs: unknown configuration {n!r} (choose from {', '.join(CONFIGS)})")
    work = a.work or tempfile.mkdtemp(prefix="ablation_")
    cache = os.path.join(work, "warm_starts")
    per_step = (4 * 4) if a.quick else (16 * 8)
    results: dict[str, list[dict]] = {n: [] for n in names}
    t0 = time.time()
    total = len(names) * a.seeds
    for seed in range(a.seeds):              # seed-major: every configuration of seed k before seed k + 1
        for n in names:
            done = sum(len(v) for v in results.values())
            left = "" if not done else f", ~{(time.time() - t0) / done * (total - done) / 60:.0f} min left"
            print(f"[ablation] {n}, seed {seed} ({done + 1}/{total}{left})", file=sys.stderr, flush=True)
            rows = run_one(n, seed, os.path.join(work, f"{n}-seed{seed}"), steps=a.steps, nproc=a.nproc, cache=cache,
                           quick=a.quick, max_new_tokens=a.max_new_tokens)
            results[n].append(dict(seed=seed, **summarize_run(rows, a.target, per_step)))
    out = report(results, a.target)
    import importlib.metadata as md

    meta = dict(common=COMMON, configs={n: config_values(n) for n in names}, seeds=a.seeds, steps=a.steps,
                nproc=a.nproc, target=a.target, quick=a.quick, max_new_tokens=a.max_new_tokens,
                minutes=(time.time() - t0) / 60,
                versions={k: md.version(k) for k in ("torch", "transformers")})
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"meta": meta, "runs": results, **out}, f, indent=1)
    png = os.path.splitext(a.out)[0] + ".png"
    plot(results, png)
    print(f"wrote {a.out} and {png} ({meta['minutes']:.1f} min)")
    if a.work is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return {"meta": meta, "runs": results, **out}


if __name__ == "__main__":
    main()
