"""Metrics: one JSON object per step in ``metrics.jsonl``, a console line per step (with elapsed time and
ETA), a PNG at the end, and optionally TensorBoard and Weights & Biases (``run.report_to``)."""

from __future__ import annotations

import json
import math
import os
import sys
import time

import torch

from lead_fast.algo import CORRECT, DEGENERATE, NO_ANSWER, GroupFilter
from lead_fast.errors import NoSignalError
from lead_fast.rollout.graded import GradedRollouts



# --------------------------------------------------------------------------------------------------
# A step's metrics: this rank's counts (summed over ranks by name), then the row. Plain functions of the
# step's parts, so a test can build them in-process.


def step_counts(rollouts: GradedRollouts, rewards: torch.Tensor, groups: GroupFilter, num_prompts: int,
                reward_funcs: tuple[str, ...] = ()) -> dict:
    """This rank's sums for one step's metrics (``all_sum`` them, then ``step_metrics``). ``reward_funcs``:
    the functions whose values ``rollouts.scores`` holds, each summed over the completions it scored."""
    outcomes = torch.tensor(rollouts.outcomes, dtype=torch.long)
    gid, dropped = rollouts.group_ids, ~groups.keep

    def groups_where(mask: torch.Tensor) -> int:
        return len(set(gid[mask].tolist()))

    per_func = {}
    if rollouts.scores is not None and len(reward_funcs) > 1:
        for spec, col in zip(reward_funcs, rollouts.scores.T):
            name = spec.rpartition(":")[2]          # the function's own name (math: math)
            per_func[f"reward_fn/{name}"] = float(col.nansum())
            per_func[f"reward_fn/{name}/scored"] = int((~col.isnan()).sum())
    unscored = int(rewards.isnan().sum())
    return {"responses": len(rollouts.outcomes), "correct": int((outcomes == CORRECT).sum()),
            "no_answer": int((outcomes == NO_ANSWER).sum()), "degenerate": int((outcomes == DEGENERATE).sum()),
            "reward": float(rewards.nansum()), "scored": len(rollouts.outcomes) - unscored, "unscorable": unscored,
            **per_func, "tokens": float(rollouts.lengths.sum()), "groups": num_prompts,
            "groups_dropped": num_prompts - groups_where(groups.keep),
            "dropped_all_equal": groups_where(groups.all_equal & dropped),
            "dropped_no_correct": groups_where(groups.no_correct & dropped),
            "grade_timeouts": rollouts.grade_timeouts,
            "truncated": sum(c.finish_reason == "length" for c in rollouts.completions)}


def step_metrics(tot: dict, update: dict, seconds: dict, lr: float, shares: int = 1) -> dict:
    """One step's row of ``metrics.jsonl`` from the counts summed over the ``shares`` trainer ranks
    (``step_counts``, plus ``staleness`` and ``stale_dropped`` when given), the updater's result and the step's
    ``seconds``: ``rollout``, ``grade``, ``update``, ``sync``, ``step`` (this rank's), ``slowest_rollout`` (the
    slowest rank's) and, when given, ``wait`` (for the batch to arrive) and ``overlap`` (of its generation
    with updates)."""
    n = max(tot["responses"], 1.0)
    extra = {f"reward/{k[len('reward_fn/'):]}": tot[k] / max(tot[f"{k}/scored"], 1.0) for k in tot
             if k.startswith("reward_fn/") and not k.endswith("/scored")}
    if tot.get("unscorable"):
        extra["reward/unscorable_frac"] = tot["unscorable"] / n
    if "staleness" in tot:
        extra["rollout/staleness"] = tot["staleness"] / shares
        extra["rollout/stale_dropped"] = int(tot["stale_dropped"])
    if "overlap" in seconds:
        extra["time/wait_s"] = seconds["wait"]
        extra["time/overlap_frac"] = seconds["overlap"] / max(seconds["step"], 1e-9)
    return {
        "loss": update["loss"], "reward/mean": tot["reward"] / max(tot.get("scored", n), 1.0), "accuracy": tot["correct"] / n,
        "response_length/mean": tot["tokens"] / n, "no_answer_frac": tot["no_answer"] / n,
        "degenerate_frac": tot["degenerate"] / n, "clip_frac": update["clip_frac"], "kl": update["kl"],
        "entropy": update["entropy"], "grad_norm": update["grad_norm"], "lr": lr,
        "groups_dropped": int(tot["groups_dropped"]), "groups": int(tot["groups"]),
        "groups_dropped/all_equal": int(tot["dropped_all_equal"]),
        "groups_dropped/no_correct": int(tot["dropped_no_correct"]),
        "grade_timeouts": int(tot["grade_timeouts"]), "nonfinite_skipped": update["nonfinite_skipped"],
        "time/rollout_s": seconds["rollout"], "time/grade_s": seconds["grade"], "time/update_s": seconds["update"],
        "time/sync_s": seconds["sync"], "time/step_s": seconds["step"],
        "tokens_per_s": tot["tokens"] / max(seconds["step"], 1e-9),
        "rollout/tokens_per_s": tot["tokens"] / max(seconds["slowest_rollout"], 1e-9),
        "rollout/truncated_frac": tot["truncated"] / n,
        # engine vs trainer (NaN when the engine gives no log-probs); the flag is the correction's own
        **{f"rollout/{k}": update[k] for k in ("logprob_gap", "mismatch_kl", "is_weight_mean", "is_truncated_frac",
                                               "is_masked_frac") if k in update},
        **extra,
    }


def eval_counts(results, levels: list | None = None, all_levels: tuple = ()) -> dict:
    """This rank's sums over its eval problems (``ProblemResult``s of ``lead_fast.eval``); with ``levels``
    (each problem's ``level`` column), also per level, for every level in ``all_levels`` (every rank gives
    the same keys, as ``all_sum`` sums by name)."""
    out = {"problems": len(results), "pass1": sum(r.correct / r.n for r in results),
           "cons": sum(r.vote_correct for r in results), "responses": sum(r.n for r in results),
           "tokens": sum(sum(r.lengths) for r in results), "correct": sum(r.correct for r in results),
           "correct_tokens": sum(sum(r.correct_lengths) for r in results)}
    for level in all_levels:
        mine = [r for r, lv in zip(results, levels) if lv == level]
        out[f"problems/{level}"] = len(mine)
        out[f"pass1/{level}"] = sum(r.correct / r.n for r in mine)
    return out


def eval_metrics(tot: dict, seconds: float) -> dict:
    """The trainer's eval columns from ``eval_counts`` summed over ranks; ``eval/accuracy`` is pass@1 and
    ``eval/cons@n`` the majority vote over ``rollout.eval_n`` samples; ``eval/correct_length`` the mean length
    of the correct responses (NaN: none); ``eval/pass@1/LEVEL`` per level of the eval problems."""
    problems = max(tot["problems"], 1.0)
    levels = {f"eval/pass@1/{k[len('pass1/'):]}": tot[k] / max(tot[f"problems/{k[len('pass1/'):]}"], 1.0)
              for k in tot if k.startswith("pass1/")}
    return {"eval/accuracy": tot["pass1"] / problems, "eval/pass@1": tot["pass1"] / problems,
            "eval/cons@n": tot["cons"] / problems,
            "eval/response_length": tot["tokens"] / max(tot["responses"], 1.0),
            "eval/correct_length": tot["correct_tokens"] / tot["correct"] if tot["correct"] else math.nan,
            **levels, "time/eval_s": seconds}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def no_signal(row: dict) -> str | None:
    """Why a step trained nothing (every group dropped), as the console says it; None when something trained."""
    groups = row.get("groups", 0)
    if not groups or row.get("groups_dropped") != groups:
        return None
    equal, none_correct = row.get("groups_dropped/all_equal", 0), row.get("groups_dropped/no_correct", 0)
    return (f"no update: all {groups} groups dropped ({equal} with all rewards equal, {none_correct} without a "
            f"correct response)")


class NoSignalWatch:
    """Counts steps in a row that trained nothing (``no_signal``); ``limit`` of them stop the run."""

    def __init__(self, limit: int, log_row=None):
        self.limit, self.in_a_row, self.log_row = limit, 0, log_row

    def check(self, step: int, row: dict) -> dict:
        """Step ``step``'s ``row``, after counting it; at the limit, logs it (``log_row``) and raises
        ``NoSignalError`` with advice."""
        self.in_a_row = self.in_a_row + 1 if no_signal(row) else 0
        if self.limit and self.in_a_row >= self.limit:
            if self.log_row is not None:
                self.log_row({"step": step, **row})
            acc = row.get("accuracy", 0)
            cause = ("no response was correct: the model cannot yet give the answer format or solve these "
                     "problems; a warm start (--run.warm_start_steps) or easier problems give it a start"
                     if acc == 0 else "every response of a group got the same reward: more responses per prompt "
                     "(--rollout.n) or a higher --rollout.temperature give groups a spread"
                     if acc < 1 else "every response was correct: the problems are too easy for this model")
            raise NoSignalError(f"{self.in_a_row} steps in a row (up to step {step}) trained nothing: every "
                                f"group was dropped; {cause}. (--run.max_no_signal_steps {self.limit}; 0 never stops; "
                                f"--algo.drop_no_correct false keeps groups without a correct response)")
        return row


class MetricsLogger:
    """Writes on rank 0 only. ``resume_from_step`` drops rows past a checkpoint so a resumed run's
    file reads as one unbroken run."""

    CONSOLE_KEYS = ("loss", "reward/mean", "accuracy", "response_length/mean", "groups_dropped", "grad_norm",
                    "clip_frac", "time/step_s", "eval/accuracy", "eval/cons@n", "eval/response_length")

    def __init__(self, output_dir: str, *, enabled: bool, resume_from_step: int | None = None,
                 report_to: tuple[str, ...] = (), config: dict | None = None, max_steps: int | None = None):
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.max_steps, self.t0, self.first_step = max_steps, time.time(), resume_from_step or 0
        self.tb = self.wandb = None
        if enabled and "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=os.path.join(output_dir, "tensorboard"))
            self.tb.add_text("config", "```\n" + json.dumps(config or {}, indent=1) + "\n```", 0)
        if enabled and "wandb" in report_to:
            import wandb   # honours WANDB_MODE (offline), WANDB_PROJECT, WANDB_API_KEY, ...

            self.wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "lead_fast"), dir=output_dir,
                                    name=os.path.basename(os.path.abspath(output_dir)), config=config or {})
        if enabled:
            os.makedirs(output_dir, exist_ok=True)
            if resume_from_step is None:
                open(self.path, "w").close()
            elif os.path.exists(self.path):
                rows = read_metrics(self.path)
                with open(self.path, "w") as f:
                    for r in rows:
                        if r.get("step", 0) <= resume_from_step:
                            f.write(json.dumps(r) + "\n")

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        row = {**row, "time/elapsed_s": time.time() - self.t0}     # wall clock since this process's start
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        step = row.get("step", 0)
        scalars = {k: v for k, v in clean.items() if k != "step" and isinstance(v, (int, float))}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)
        parts = [f"step {step}"]
        why = no_signal(row)
        if why:         # loss, gradient norm and clip fraction of an update that did not happen: said instead
            parts.append(why)
        parts += [f"{k}={_fmt(row[k])}" for k in self.CONSOLE_KEYS
                  if k in row and not (why and k in ("loss", "grad_norm", "clip_frac", "groups_dropped"))]
        elapsed = time.time() - self.t0
        parts.append(f"elapsed {elapsed:.0f}s")
        done = step - self.first_step
        if self.max_steps and done > 0 and step < self.max_steps:
            parts.append(f"ETA {elapsed / done * (self.max_steps - step):.0f}s")
        print(" | ".join(parts), file=sys.stdout, flush=True)


    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: str) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def plot_finished_run(metrics_path: str, out_png: str, log) -> None:
    """``plot_metrics`` after a run, said through ``log``; the run is finished and saved, so a plot that
    fails is reported, never raised."""
    try:
        log(f"wrote {metrics_path} and {plot_metrics(metrics_path, out_png)}")
    except Exception as e:  # noqa: BLE001 - matplotlib and the file system raise anything
        log(f"wrote {metrics_path}; the plot failed ({type(e).__name__}: {e}), the run did not")


def plot_metrics(metrics_path: str, out_png: str) -> str:
    """Accuracy, reward and response length over steps (train and eval) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [("accuracy", "eval/accuracy", "accuracy"), ("reward/mean", None, "reward"),
              ("response_length/mean", "eval/response_length", "response length (tokens)")]
    for ax, (train_key, eval_key, title) in zip(axes, panels):
        pts = [(r["step"], r[train_key]) for r in rows if r.get(train_key) is not None]
        if pts:
            ax.plot(*zip(*pts), label="train rollouts", lw=1.2)
        if eval_key:
            ev = [(r["step"], r[eval_key]) for r in rows if r.get(eval_key) is not None]
            if ev:
                ax.plot(*zip(*ev), "o-", label="eval", lw=1.6)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
