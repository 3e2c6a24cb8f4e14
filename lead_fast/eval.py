"""Evaluate a model the way reasoning papers report it: pass@1 over n samples, pass@k, cons@n, length.

    python -m lead_fast.eval --model runs/tiny/export/step-00000080 --data data/grpo_lead/aime24.json \\
        --n 32 --temperature 0.6 --top-p 0.95 --max-new-tokens 12288 --output-dir evals/aime24
    torchrun --nproc_per_node=8 -m lead_fast.eval --num-samples 32 ...   # problems split across ranks
                                                   # (torchrun takes "--n" for its own flags)

Prompts are built as in training (template and instruction; from a run's ``config.yaml`` with
``--run-dir``), responses graded with the same rules (``answer_from``, ``require_think``,
``unboxed_is_wrong``). Writes ``samples.jsonl`` (one line per sample, appended as problems finish, so a
re-run with the same ``--output-dir`` skips problems already done), ``summary.json`` and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch.distributed as dist

from lead_fast.algo import GradingRules
from lead_fast.choices import Engine, Switch, options
from lead_fast.config import DataConfig, RolloutConfig
from lead_fast.data import build_prompt, load_problems
from lead_fast.distributed import on_rank0, setup_distributed, step_seed
from lead_fast.errors import EvalError, LeadFastError, describe_os_error
from lead_fast.model import check_context, load_tokenizer, resolve_dtype
from lead_fast.rollout import EngineMemory, SamplingSettings, make_engine
from lead_fast.rollout.scoring import default_ks, generate_and_score, score_problem, summarize
from lead_fast.rollout.vllm_check import vllm_import_problem
from lead_fast.task import instruction_for

# --------------------------------------------------------------------------------------------------
# The command


@dataclass
class EvalSettings:
    """Everything that determines the samples; a re-run must match it to resume."""

    model: str
    data: str
    n: int
    temperature: float
    top_p: float
    min_p: float
    max_new_tokens: int
    seed: int
    instruction: str
    template: str
    answer_from: str
    require_think: bool
    unboxed_is_wrong: bool
    stop: list[str] = field(default_factory=list)

    def rules(self, timeout_s: float) -> GradingRules:
        """The grading rules these samples are graded by, with a per-response deadline of ``timeout_s``."""
        return GradingRules(require_think=self.require_think, answer_from=self.answer_from,
                            unboxed_is_wrong=self.unboxed_is_wrong, timeout_s=timeout_s)


def _parse(argv) -> tuple[argparse.Namespace, EvalSettings, list[int]]:
    ap = argparse.ArgumentParser(prog="python -m lead_fast.eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a Hugging Face model directory (an export, say)")
    ap.add_argument("--data", required=True, help="problems: .json, .jsonl or .parquet")
    ap.add_argument("--output-dir", required=True, help="where samples.jsonl and summary.json go")
    # torchrun's own parser reads "--n" as an ambiguous abbreviation of its flags: under torchrun use
    # --num-samples
    ap.add_argument("--n", "--num-samples", dest="n", type=int, default=1, help="samples per problem (default 1)")
    ap.add_argument("--k", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="comma-separated k for pass@k (default 1, 2, 4, ... up to n)")
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--min-p", type=float, default=0.0, help="min-p sampling (GRPO-LEAD's own evaluation: 0.01)")
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine", choices=options(Engine), default="hf")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.0,
                    help="vLLM: fraction of the device's memory for the engine, as vLLM reads it (of the GPU on CUDA; "
                         "of host RAM on CPU, counting this whole process). 0 (default): 0.9 on CUDA; on CPU the KV "
                         "cache is sized for one batch instead")
    ap.add_argument("--kv-cache-gib", type=float, default=0.0,
                    help="vLLM: > 0 fixes the KV cache at this many GiB (the fraction is then unused)")
    ap.add_argument("--enforce-eager", choices=options(Switch), default="auto",
                    help="vLLM: no torch.compile / CUDA graphs (auto: on for CPU, where compiling costs minutes)")
    ap.add_argument("--run-dir", help="a training run's output directory: use its prompt and grading settings")
    ap.add_argument("--problem-field", default="problem")
    ap.add_argument("--answer-field", default="answer")
    ap.add_argument("--limit", type=int, default=0, help="only the first N problems (0: all)")
    ap.add_argument("--batch-problems", type=int, default=8, help="problems per generate call, per rank")
    ap.add_argument("--grade-timeout-s", type=float, default=5.0)
    args = ap.parse_args(argv)
    data_cfg, rules, stop = DataConfig(), GradingRules(), []
    if args.run_dir:
        import yaml

        path = os.path.join(args.run_dir, "config.yaml")
        try:
            with open(path) as f:
                run = yaml.safe_load(f)
        except (OSError, ValueError) as e:
            raise EvalError(f"cannot read the run's config {path}: {e}") from None
        d, a = run.get("data", {}), run.get("algo", {})
        data_cfg = DataConfig(path=d.get("path"), instruction=d.get("instruction", data_cfg.instruction),
                              template=d.get("template", "auto"))
        rules = GradingRules(**{k: a[k] for k in ("answer_from", "require_think", "unboxed_is_wrong") if k in a})
        stop = list(run.get("rollout", {}).get("stop", []))
    if args.n < 1:
        raise EvalError(f"--n must be >= 1, got {args.n}")
    ks = args.k or default_ks(args.n)
    if any(not 1 <= k <= args.n for k in ks):
        raise EvalError(f"every --k must lie in [1, n={args.n}], got {ks}")
    if not (0 <= args.gpu_memory_utilization <= 1 and math.isfinite(args.kv_cache_gib) and args.kv_cache_gib >= 0):
        raise EvalError("--gpu-memory-utilization must be in [0, 1] (0: automatic) and --kv-cache-gib >= 0")
    if args.max_new_tokens < 1 or args.batch_problems < 1 or args.limit < 0:
        raise EvalError("--max-new-tokens and --batch-problems must be >= 1, --limit >= 0")
    if not (args.temperature >= 0 and 0 < args.top_p <= 1 and 0 <= args.min_p < 1
            and math.isfinite(args.grade_timeout_s) and args.grade_timeout_s > 0):
        raise EvalError("--temperature must be >= 0, --top-p in (0, 1], --min-p in [0, 1), --grade-timeout-s finite "
                        "and > 0")
    if args.temperature == 0 and args.n > 1:
        raise EvalError("--temperature 0 (greedy) gives n identical samples; use --n 1 or a temperature > 0")
    if args.engine == "vllm" and (problem := vllm_import_problem()):
        raise EvalError(problem)
    settings = EvalSettings(model=os.path.abspath(args.model), data=os.path.abspath(args.data), n=args.n,
                            temperature=args.temperature, top_p=args.top_p, min_p=args.min_p,
                            max_new_tokens=args.max_new_tokens,
                            seed=args.seed, instruction=instruction_for(data_cfg), template=data_cfg.template,
                            answer_from=rules.answer_from, require_think=rules.require_think,
                            unboxed_is_wrong=rules.unboxed_is_wrong, stop=stop)
    return args, settings, ks


def _done_so_far(out_dir: str, settings: EvalSettings) -> dict[int, list[dict]]:
    """Samples already written by an earlier run with the same settings, by problem id."""
    cfg_path, samples_path = os.path.join(out_dir, "eval_config.json"), os.path.join(out_dir, "samples.jsonl")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            before = json.load(f)
        if before != asdict(settings):
            changed = sorted(k for k in before if before.get(k) != asdict(settings).get(k))
            raise EvalError(f"{out_dir} holds an evaluation with other settings ({', '.join(changed)}); "
                            "pass another --output-dir")
    done: dict[int, list[dict]] = {}
    if os.path.exists(samples_path):
        with open(samples_path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    done.setdefault(row["problem_id"], []).append(row)
    return {pid: rows for pid, rows in done.items() if len(rows) == settings.n}


def _start_output(out_dir: str, settings: EvalSettings) -> dict[int, list[dict]]:
    """Rank 0: the samples an earlier run with these settings left in ``out_dir``; records the settings."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        done = _done_so_far(out_dir, settings)
        with open(os.path.join(out_dir, "eval_config.json"), "w") as f:
            json.dump(asdict(settings), f, indent=1)
    except OSError as e:
        raise EvalError(f"cannot write to {out_dir}: {describe_os_error(e)}; pass another --output-dir") from None
    return done


def _progress(total: int, enabled: bool):
    """A tqdm bar with ETA on a terminal (None elsewhere: the caller prints plain lines for logs and CI)."""
    if not (enabled and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="problem", desc="eval")


def run(argv=None) -> int:
    args, settings, ks = _parse(argv)
    problems = load_problems(settings.data, args.problem_field, args.answer_field)
    if args.limit:
        problems = problems[: args.limit]
    tok = load_tokenizer(settings.model)
    rank, world, device = setup_distributed()
    log = (lambda m: print(m, flush=True)) if rank == 0 else (lambda m: None)
    # rank 0 reads what an earlier run left and records the settings; every rank gets its answer
    done = on_rank0(lambda: _start_output(args.output_dir, settings))
    todo = [i for i in range(len(problems)) if i not in done]
    if done:
        log(f"skipping {len(done)} problems already in {args.output_dir}/samples.jsonl")
    mine = todo[rank::world]
    # every rank tokenizes every problem once and checks the longest of all, so that all ranks agree
    all_prompts = [build_prompt(tok, p.problem, settings.instruction, settings.template, trl=p.trl) for p in problems]
    check_context(settings.model, max(map(len, all_prompts), default=1), settings.max_new_tokens,
                  flags="--max-new-tokens (or leave out the longest problems)")
    prompts = {i: all_prompts[i] for i in mine}
    longest = max((len(p) for p in prompts.values()), default=1)
    dtype = resolve_dtype("auto", device)
    memory = EngineMemory(gpu_memory_utilization=args.gpu_memory_utilization, kv_cache_gib=args.kv_cache_gib,
                          batch_tokens=args.batch_problems * settings.n * (longest + settings.max_new_tokens),
                          default_fraction=0.9, flags=("--gpu-memory-utilization", "--kv-cache-gib"))
    engine = make_engine(RolloutConfig(engine=args.engine, enforce_eager=args.enforce_eager), settings.model,
                         device=device, dtype=dtype, tokenizer=tok, seed=settings.seed,
                         max_model_len=longest + settings.max_new_tokens, memory=memory, colocated=False)
    rules = settings.rules(args.grade_timeout_s)
    rounds = -(-len(todo) // (world * args.batch_problems)) if todo else 0
    bar, t0, finished = _progress(len(todo), rank == 0), time.time(), 0
    for r in range(rounds):
        batch = mine[r * args.batch_problems:(r + 1) * args.batch_problems]
        sampling = SamplingSettings(n=settings.n, temperature=settings.temperature,
                                    top_p=settings.top_p if settings.temperature > 0 else 1.0, min_p=settings.min_p,
                                    max_new_tokens=settings.max_new_tokens,
                                    seed=step_seed(settings.seed, r, rank),
                                    stop=tuple(settings.stop))
        _, samples = generate_and_score(engine, tok, [prompts[i] for i in batch], [problems[i].answer for i in batch],
                                        sampling, rules, score=False)
        rows = [dict(problem_id=i, sample=s, **x) for i, group in zip(batch, samples) for s, x in enumerate(group)]
        gathered = [None] * world
        dist.all_gather_object(gathered, rows)
        if rank == 0:
            with open(os.path.join(args.output_dir, "samples.jsonl"), "a") as f:
                for part in gathered:
                    for row in part:
                        f.write(json.dumps(row) + "\n")
            new = len({row["problem_id"] for part in gathered for row in part})
            finished += new
            if bar is not None:
                bar.update(new)
            else:
                rate = (time.time() - t0) / max(finished, 1)
                log(f"eval: {finished}/{len(todo)} problems, ETA {rate * (len(todo) - finished):.0f}s")
    if bar is not None:
        bar.close()
    engine.close()
    if rank == 0:
        _write_summary(args.output_dir, settings, problems, ks, args.grade_timeout_s)
    dist.barrier()
    dist.destroy_process_group()
    return 0


def _write_summary(out_dir: str, settings: EvalSettings, problems, ks, timeout_s: float) -> None:
    by_problem: dict[int, list[dict]] = {}
    with open(os.path.join(out_dir, "samples.jsonl")) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                by_problem.setdefault(row["problem_id"], []).append(row)
    results = []
    for pid in sorted(by_problem):
        rows = sorted(by_problem[pid], key=lambda r: r["sample"])
        results.append(score_problem([r["outcome"] for r in rows], [r["answer"] for r in rows],
                                     [r["length"] for r in rows], [r["finish_reason"] for r in rows],
                                     problems[pid].answer, timeout_s=timeout_s))
    summary = dict(summarize(results, ks), settings=asdict(settings),
                   outcomes=dict(Counter(str(r["outcome"]) for rows in by_problem.values() for r in rows)))
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(markdown_table(summary), flush=True)


def markdown_table(summary: dict) -> str:
    skip = {"settings", "outcomes"}
    lines = ["| metric | value |", "|---|---|"]
    for k, v in summary.items():
        if k not in skip:
            lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    try:
        return run(argv)
    except LeadFastError as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"lead_fast.eval: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        print("lead_fast.eval: interrupted; finished problems are in samples.jsonl and a re-run resumes",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    code = main()
    if "torch.distributed" in sys.modules:    # collectives ran: leave as lead_fast.distributed.exit_process says
        from lead_fast.distributed import exit_process

        exit_process(code)
    sys.exit(code)
