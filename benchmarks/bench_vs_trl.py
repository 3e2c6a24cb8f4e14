"""lead_fast against TRL's GRPOTrainer on the same work, on CPU: seconds per step (rollout and update
apart), peak memory, and the first step's loss and reward.

    python benchmarks/bench_vs_trl.py                         # both rows (SmolLM2, then a Qwen2.5-0.5B shape)
    python benchmarks/bench_vs_trl.py --rows smollm2 --steps 2

Needs ``trl`` (1.16 was measured; ``pip install trl==1.16.0``, no pin clashes with lead_fast's) and
``lead_fast[pretrained]`` for the SmolLM2 row.

Same work, for both trainers:
- the same model directory, the same prompts (the generated task: sums with operands in [10, 100), through
  the tokenizer's chat template, lead_fast's instruction), the same group size, response budget (no stop
  strings besides EOS), sampling temperature and learning rate (AdamW, constant, gradient clip 1.0, no
  weight decay);
- both generate with transformers ``generate`` (lead_fast's hf engine, TRL without vLLM);
- one optimizer step per rollout batch, every response trained on (lead_fast's group filter off, so both
  update on all P x G sequences), no KL term and no reference model (TRL beta 0, lead_fast kl_coef 0);
- TRL in each of its configurations that could be faster here (``TRL_VARIANTS``): ``trl`` its defaults (gradient
  checkpointing on, its fused chunked head on), ``trl_nogc`` without gradient checkpointing, ``trl_cb`` also
  with transformers' continuous batching for generation (Liger's kernels, ``use_liger_kernel``, need CUDA);
  lead_fast is compared with whichever had the fastest step. lead_fast leaves activation checkpointing off;
  the ``lead_fast_ac`` row turns it on, the like-for-like comparison with TRL's default;
- rewards differ by design: TRL gets +1/-1 for correct/incorrect from lead_fast's grader (a reward
  function of its own), lead_fast its GRPO-LEAD rewards; accuracy is reported for both.

Rows: the real SmolLM2-135M-Instruct (vocabulary 49,152), and a random model of Qwen2.5-0.5B's shape
(vocabulary 151,936, tied; SmolLM2's tokenizer, so sampled ids beyond its 49,152 decode to nothing), where
the full [tokens x vocabulary] logits dominate an update's memory.

Each trainer runs in its own process (``--child``), one rank, 2 threads. Memory is the process's resident
set, sampled every 5 ms: the whole process's peak, and the update's own peak above the resident set at
its start (weights, gradients and AdamW state, the same for both, are excluded from that figure only as far
as they already exist when the update starts: AdamW's moments appear at the first step, so the steady
step, the last, is the one reported). Times are the last step's; loss and reward the first step's.
Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

# TRL's configurations: its defaults, and its switches that can make it faster (which of them do, on a given
# device, is what a run of this script shows; Liger's kernels need CUDA)
TRL_VARIANTS = {
    "trl": {},
    "trl_nogc": dict(gradient_checkpointing=False),
    "trl_cb": dict(gradient_checkpointing=False, use_transformers_continuous_batching=True),
    "trl_liger": dict(gradient_checkpointing=False, use_liger_kernel=True),
}
TRAINERS = (*TRL_VARIANTS, "lead_fast", "lead_fast_ac")
QWEN05 = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
              num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True)


class RSS:
    """Resident-set sampler: ``peak`` over the process's life, ``phase_peak`` since the last ``mark``."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = self.phase_peak = self.phase_start = self.now()
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def now(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self):
        while not self._stop:
            r = self.now()
            self.peak, self.phase_peak = max(self.peak, r), max(self.phase_peak, r)
            time.sleep(0.005)

    def mark(self) -> None:
        self.phase_start = self.phase_peak = self.now()

    def phase(self) -> dict:
        return dict(start_gib=self.phase_start / 2**30, peak_gib=self.phase_peak / 2**30,
                    above_start_gib=(self.phase_peak - self.phase_start) / 2**30)


def problems():
    from lead_fast.task import TASK_INSTRUCTION, synthetic_problems

    return synthetic_problems((10, 100)), TASK_INSTRUCTION


# ----------------------------------------------------------------------------------------------------------
# One trainer per process.


def child_lead_fast(a) -> dict:
    from lead_fast.cli import parse_args
    from lead_fast.trainer import Trainer

    rss = RSS()
    out = tempfile.mkdtemp(prefix="bench_lf_")
    cfg = parse_args(["--model", a.model, "--output-dir", out, "--max-steps", str(a.steps), "--eval-every", "0",
                      "--data.operands", "10,100", "--data.max_prompt_tokens", "128",
                      "--optim.prompts_per_step", str(a.prompts), "--rollout.n", str(a.n),
                      "--rollout.max_new_tokens", str(a.max_new_tokens), "--rollout.temperature", str(a.temperature),
                      "--optim.lr", str(a.lr), "--algo.drop_no_signal", "false", "--algo.drop_no_correct", "false",
                      "--run.seed", "0", *shlex.split(a.lead_fast_flags)])
    trainer = Trainer(cfg)
    update = trainer.updater.update
    phases = []

    def timed_update(*args, **kw):
        rss.mark()
        result = update(*args, **kw)
        phases.append(rss.phase())
        return result

    trainer.updater.update = timed_update
    rows = []
    log = trainer.metrics.log

    def logged(row):                # the training loop's own rows, one a step
        rows.append(row)
        return log(row)

    trainer.metrics.log = logged
    try:
        trainer.fit()               # the real loop: sync, generate, grade, update, checkpoint at the end
    finally:
        trainer.close()
        shutil.rmtree(out, ignore_errors=True)
    last, first = rows[-1], rows[0]
    return dict(rollout_s=last["time/rollout_s"] + last["time/grade_s"] + last["time/sync_s"],
                update_s=last["time/update_s"], step_s=last["time/step_s"], update_mem=phases[-1],
                peak_gib=rss.peak / 2**30, first_loss=first["loss"], first_reward=first["reward/mean"],
                first_accuracy=first["accuracy"], response_tokens=last["response_length/mean"])


def child_trl(a, variant: str = "trl") -> dict:
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback

    from lead_fast.algo import grade_batch

    rss = RSS()
    probs, instruction = problems()
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": f"{p.problem} {instruction}"}],
                             "answer": p.answer} for p in probs])
    seen = []

    def correctness(completions, answer, **_):
        outcomes = grade_batch([c[0]["content"] for c in completions], list(answer))
        seen.append(sum(o == 1 for o in outcomes) / len(outcomes))
        return [1.0 if o == 1 else -1.0 for o in outcomes]

    out = tempfile.mkdtemp(prefix="bench_trl_")
    args = trl.GRPOConfig(
        output_dir=out, per_device_train_batch_size=a.prompts * a.n, gradient_accumulation_steps=1,
        num_generations=a.n, max_completion_length=a.max_new_tokens, temperature=a.temperature, top_p=1.0,
        learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=0.0, num_iterations=1, max_steps=a.steps, logging_steps=1, save_strategy="no", report_to=[],
        use_cpu=True, bf16=False, seed=0, disable_tqdm=True, model_init_kwargs={"dtype": "float32"},
        **TRL_VARIANTS[variant])
    tok = AutoTokenizer.from_pretrained(a.model)
    trainer = trl.GRPOTrainer(model=a.model, reward_funcs=correctness, args=args, train_dataset=ds,
                              processing_class=tok)
    times, phases = {}, []
    generate = trainer._generate_and_score_completions

    def timed_generate(*args, **kw):
        t0 = time.perf_counter()
        result = generate(*args, **kw)
        times["rollout_s"] = time.perf_counter() - t0
        rss.mark()                 # the update starts where the rollout ends
        return result

    trainer._generate_and_score_completions = timed_generate

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            times["t0"] = time.perf_counter()

        def on_step_end(self, *_, **__):
            times["step_s"] = time.perf_counter() - times["t0"]
            phases.append(rss.phase())

    trainer.add_callback(Clock())
    try:
        trainer.train()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return dict(rollout_s=times["rollout_s"], update_s=times["step_s"] - times["rollout_s"], step_s=times["step_s"],
                update_mem=phases[-1], peak_gib=rss.peak / 2**30, first_loss=logs[0]["loss"],
                first_reward=logs[0].get("reward", float("nan")), first_accuracy=seen[0],
                response_tokens=logs[-1].get("completions/mean_length", float("nan")))


# ----------------------------------------------------------------------------------------------------------


def qwen05_dir(src: str, into: str) -> str:
    """A random model of Qwen2.5-0.5B's shape with SmolLM2's tokenizer, saved as a model directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    path = os.path.join(into, "qwen2.5-0.5b-shape")
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    tok = AutoTokenizer.from_pretrained(src)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen2Config(**QWEN05, eos_token_id=tok.eos_token_id,
                                                         pad_token_id=tok.pad_token_id, bos_token_id=None))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="smollm2,qwen05")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step")
    ap.add_argument("--n", type=int, default=8, help="responses per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lead-fast-flags", default="", help="more lead_fast flags, e.g. '--optim.packing false'")
    ap.add_argument("--trainers", default="trl,trl_nogc,trl_cb,lead_fast,lead_fast_ac",
                    help="trl: TRL's defaults (gradient checkpointing on); trl_nogc: without it; trl_cb: also "
                         "transformers' continuous batching for generation; trl_liger: Liger's kernels (CUDA only); "
                         "lead_fast_ac: lead_fast with activation checkpointing, as TRL's default")
    ap.add_argument("--out", default="bench_vs_trl.json")
    ap.add_argument("--child", choices=TRAINERS, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        import torch

        torch.set_num_threads(a.threads)
        if a.child == "lead_fast_ac":
            a.lead_fast_flags += " --model.activation_checkpointing true"
        result = child_trl(a, a.child) if a.child in TRL_VARIANTS else child_lead_fast(a)
        with open(a.result, "w") as f:
            json.dump(result, f)
        return []

    for who in a.trainers.split(","):
        if who not in TRAINERS:
            raise SystemExit(f"--trainers: unknown trainer {who!r} (choose from {', '.join(TRAINERS)})")
    if "trl_liger" in a.trainers.split(","):
        raise SystemExit("--trainers trl_liger: Liger's kernels need CUDA, and this benchmark runs both trainers on "
                         "the CPU (use_cpu=True)")
    import importlib.metadata as md

    from lead_fast.pretrained import model_dir

    smol = model_dir("smollm2", log=lambda m: print(m, file=sys.stderr))
    work = tempfile.mkdtemp(prefix="bench_vs_trl_")
    models = {"smollm2": ("SmolLM2-135M-Instruct", lambda: smol),
              "qwen05": ("Qwen2.5-0.5B shape (random)", lambda: qwen05_dir(smol, work))}
    rows = []
    try:   # the work directory holds the 0.5B model (2 GB): never left behind
        for key in a.rows.split(","):
            label, make = models[key]
            path = make()
            for who in a.trainers.split(","):
                res = os.path.join(work, f"{key}-{who}.json")
                cmd = [sys.executable, os.path.abspath(__file__), "--child", who, "--model", path, "--result", res,
                       "--steps", str(a.steps), "--prompts", str(a.prompts), "--n", str(a.n),
                       "--max-new-tokens", str(a.max_new_tokens), "--temperature", str(a.temperature), "--lr", str(a.lr),
                       "--threads", str(a.threads), "--lead-fast-flags", a.lead_fast_flags]
                print(f"[{label}] {who} ...", file=sys.stderr, flush=True)
                env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), TOKENIZERS_PARALLELISM="false")
                p = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                if p.returncode != 0:
                    print(p.stderr[-4000:], file=sys.stderr)
                    raise SystemExit(f"{who} failed on {label} (exit {p.returncode})")
                with open(res) as f:
                    rows.append(dict(model=label, trainer=who, **json.load(f)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    versions = {k: md.version(k) for k in ("trl", "transformers", "torch")}
    meta = dict(trl_variants={k: v for k, v in TRL_VARIANTS.items() if k in a.trainers.split(",")}, steps=a.steps, prompts=a.prompts, n=a.n, max_new_tokens=a.max_new_tokens, lr=a.lr,
                temperature=a.temperature, threads=a.threads, lead_fast_flags=a.lead_fast_flags, **versions)
    print(f"\n{a.prompts} prompts x {a.n} responses x <= {a.max_new_tokens} tokens, one rank, {a.threads} threads; "
          f"last of {a.steps} steps; {', '.join(f'{k} {v}' for k, v in versions.items())}")
    head = (f"{'model':30} {'trainer':12} {'step s':>7} {'rollout s':>9} {'update s':>8} {'update mem GiB':>14} "
            f"{'peak GiB':>8} {'loss@1':>8} {'reward@1':>8} {'acc@1':>6}")
    print(head)   # TRL checkpoints activations by default (GRPOConfig.gradient_checkpointing=True)
    for r in rows:
        print(f"{r['model']:30} {r['trainer']:12} {r['step_s']:7.1f} {r['rollout_s']:9.1f} {r['update_s']:8.1f} "
              f"{r['update_mem']['above_start_gib']:14.2f} {r['peak_gib']:8.2f} {r['first_loss']:8.4f} "
              f"{r['first_reward']:8.3f} {r['first_accuracy']:6.3f}")
    for key in a.rows.split(","):
        pair = {r["trainer"]: r for r in rows if r["model"] == models[key][0]}
        trls = [r for w, r in pair.items() if w in TRL_VARIANTS]
        if not trls:
            continue
        fastest = min(trls, key=lambda r: r["step_s"])     # TRL's strongest configuration here: its fastest step
        for who in ("lead_fast", "lead_fast_ac"):
            if who not in pair:
                continue
            t, lf = fastest, pair[who]
            print(f"{models[key][0]}: {who} against TRL's fastest here ({t['trainer']}): step {lf['step_s'] / t['step_s']:.2f}x, "
                  f"rollout {lf['rollout_s'] / t['rollout_s']:.2f}x, update {lf['update_s'] / t['update_s']:.2f}x its time, "
                  f"{lf['update_mem']['above_start_gib'] / t['update_mem']['above_start_gib']:.2f}x its update's memory "
                  f"above the step's start; whole-process peak {lf['peak_gib'] / t['peak_gib']:.2f}x")
    with open(a.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(f"wrote {a.out}")
    return rows


if __name__ == "__main__":
    main()
