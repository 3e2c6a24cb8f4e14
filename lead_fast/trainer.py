"""The GRPO-LEAD loop, top to bottom.

Choices this loop makes (GRPO-LEAD, arXiv 2504.09696, and its official recipe):
- rewards: outcome rewards with an explicit penalty for wrong answers, length-regularized among each
  group's correct responses (``lead_rewards``); grading by math-verify in a process pool;
- advantages: group-normalized, reweighted by problem difficulty; the weight ``w(rho)`` / ``w(1-rho)`` is
  applied inside the loss head from each token's group ``correct_ratio``;
- groups whose rewards are all equal are dropped (no signal), and counted;
- loss: clipped policy gradient, token mean over the whole rollout batch across ranks (carried by
  ``token_weights``), optional k3 KL to a frozen reference and entropy bonus;
- one optimizer step per rollout batch by default: on-policy, so ``old_logprobs=None`` and no old-policy
  pass; with ``updates_per_batch > 1`` old log-probs are computed once before the updates;
- every rank generates, grades and computes advantages for its own prompts (groups never span ranks);
  all sampling and shuffling derive from ``(seed, step, rank)``, so a resumed run repeats exactly.

One step: sample prompts -> rollouts -> grade -> rewards -> advantages (drop groups without signal) ->
[old / reference log-probs] -> update (micro-batches by token budget, clip, AdamW) -> sync weights into
the rollout engine -> metrics, eval, checkpoint.
"""

from __future__ import annotations

import functools
import math
import os
import random
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lead_fast import checkpoint as ckpt
from lead_fast.algo import grade_batch, groups_without_signal, lead_advantages, lead_rewards
from lead_fast.algo.grading import get_pool
from lead_fast.config import ConfigError, TrainConfig
from lead_fast.data import (TASK_INSTRUCTION, DataError, Problem, build_prompt, load_problems, split_eval,
                            synthetic_problems)
from lead_fast.metrics import MetricsLogger, plot_metrics
from lead_fast.model import PolicyWithHead, load_model, load_tokenizer, resolve_dtype, shard
from lead_fast.rollout import SamplingSettings, make_engine


@dataclass
class Sample:
    """One response, ready for the update."""
    prompt: list[int]
    response: list[int]
    advantage: float
    correct_ratio: float
    old_logprobs: torch.Tensor | None = None   # (len(response),) when updates_per_batch > 1
    ref_logprobs: torch.Tensor | None = None   # (len(response),) when kl_coef > 0


# --------------------------------------------------------------------------------------------------
# Distributed helpers


def setup_distributed() -> tuple[int, int, torch.device]:
    if "RANK" not in os.environ:  # plain `python -m lead_fast.train`: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return dist.get_rank(), dist.get_world_size(), device


def all_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_max(value: int, device) -> int:
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def step_seed(seed: int, step: int, rank: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + step * 10_007 + rank * 101 + salt) % (2**62)


# --------------------------------------------------------------------------------------------------
# Data


def prepare_model_dir(cfg: TrainConfig, rank: int, log) -> str:
    """The model directory to train: ``--model``, or the embedded tiny model (built by rank 0)."""
    if cfg.model.path is not None:
        return cfg.model.path
    from lead_fast.warmstart import build_embedded_model

    path = os.path.join(cfg.run.output_dir, "base_model")
    if rank == 0:
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)  # the other ranks wait: give the warm start every core
        try:
            build_embedded_model(path, steps=cfg.run.warm_start_steps, seed=cfg.run.seed, log=log)
        finally:
            torch.set_num_threads(threads)
    dist.barrier()
    return path


def load_task(cfg: TrainConfig) -> tuple[list[Problem], list[Problem], str]:
    """(train problems, eval problems, instruction)."""
    d = cfg.data
    if d.path is None:
        train, ev = split_eval(synthetic_problems(), d.eval_size, cfg.run.seed)
        return train, ev, TASK_INSTRUCTION
    train = load_problems(d.path, d.problem_field, d.answer_field)
    if d.eval_path:
        ev = load_problems(d.eval_path, d.problem_field, d.answer_field)[: d.eval_size]
    else:
        train, ev = split_eval(train, d.eval_size, cfg.run.seed)
    return train, ev, d.instruction


def tokenize_prompts(problems, tok, cfg, instruction, what: str, log):
    """Prompt ids per problem; too-long prompts are skipped (counted in a warning)."""
    out, skipped = [], 0
    for p in problems:
        ids = build_prompt(tok, p.problem, instruction, cfg.data.template)
        if len(ids) > cfg.data.max_prompt_tokens:
            skipped += 1
            continue
        out.append((ids, p.answer))
    if not out:
        raise DataError(f"every {what} prompt is longer than data.max_prompt_tokens={cfg.data.max_prompt_tokens} "
                        f"tokens ({skipped} of them); raise the limit")
    if skipped:
        log(f"WARNING: skipped {skipped} of {len(problems)} {what} prompts longer than "
            f"data.max_prompt_tokens={cfg.data.max_prompt_tokens}")
    return out


@functools.lru_cache(maxsize=2)
def _epoch_order(n_train: int, seed: int, epoch: int) -> tuple[int, ...]:
    perm = list(range(n_train))
    random.Random(seed * 7_919 + epoch).shuffle(perm)
    return tuple(perm)


def prompts_for_step(n_train: int, step: int, per_step: int, rank: int, world: int, seed: int) -> list[int]:
    """Indices of this rank's prompts: a fresh seeded permutation per epoch over one global stream."""
    per_rank = per_step // world
    start = step * per_step + rank * per_rank
    return [_epoch_order(n_train, seed, k // n_train)[k % n_train] for k in range(start, start + per_rank)]


# --------------------------------------------------------------------------------------------------
# Micro-batches


def plan_micro_batches(samples: list[Sample], budget: int) -> list[list[Sample]]:
    """Greedy packing by padded tokens (rows x longest row) under ``budget``; every batch has >= 1 row."""
    batches, cur, longest = [], [], 0
    for s in sorted(samples, key=lambda s: len(s.prompt) + len(s.response)):
        L = len(s.prompt) + len(s.response)
        if cur and max(longest, L) * (len(cur) + 1) > budget:
            batches.append(cur)
            cur, longest = [], 0
        cur.append(s)
        longest = max(longest, L)
    if cur:
        batches.append(cur)
    return batches


def collate(batch: list[Sample], pad_id: int, device, token_weight: float):
    """Right-padded ``(B, T)`` ids and mask; flat positions of the hidden states that predict response
    tokens; per-token targets, advantages, correct ratios, weights and optional old/ref log-probs."""
    T = max(len(s.prompt) + len(s.response) for s in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    pos, tgt, adv, rho, old, ref = [], [], [], [], [], []
    for b, s in enumerate(batch):
        seq = s.prompt + s.response
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
        P, R = len(s.prompt), len(s.response)
        pos.append(torch.arange(b * T + P - 1, b * T + P - 1 + R))  # hidden at t predicts token t + 1
        tgt.append(torch.tensor(s.response))
        adv.append(torch.full((R,), s.advantage))
        rho.append(torch.full((R,), s.correct_ratio))
        if s.old_logprobs is not None:
            old.append(s.old_logprobs)
        if s.ref_logprobs is not None:
            ref.append(s.ref_logprobs)
    n = sum(len(s.response) for s in batch)
    return dict(
        input_ids=ids.to(device), attention_mask=mask.to(device), positions=torch.cat(pos).to(device),
        targets=torch.cat(tgt).to(device), advantages=torch.cat(adv).to(device),
        correct_ratio=torch.cat(rho).to(device), token_weights=torch.full((n,), token_weight, device=device),
        old_logprobs=torch.cat(old).to(device) if old else None,
        ref_logprobs=torch.cat(ref).to(device) if ref else None,
    )


def pad_plan(plan: list[list[Sample]], device, filler: Sample) -> list[tuple[list[Sample], bool]]:
    """Every rank must run the same number of forwards (FSDP2 gathers in each): pad with zero-weight ones."""
    n = all_max(len(plan), device)
    return [(b, True) for b in plan] + [([filler], False)] * (n - len(plan))


# --------------------------------------------------------------------------------------------------
# Weight sync


def sync_weights(policy: torch.nn.Module, engine, bucket_bytes: int) -> None:
    """Gather every parameter (``full_tensor`` is a collective: all ranks call it, in the same order) and
    hand the engine buckets of full tensors under their Hugging Face names."""
    from torch.distributed.tensor import DTensor

    bucket, size = [], 0
    for name, p in policy.state_dict().items():
        t = p.full_tensor() if isinstance(p, DTensor) else p
        bucket.append((name.removeprefix("lm."), t.detach()))
        size += t.numel() * t.element_size()
        if size >= bucket_bytes:
            engine.load_weights(bucket)
            bucket, size = [], 0
    if bucket:
        engine.load_weights(bucket)
    if hasattr(engine, "finish_sync"):
        engine.finish_sync()


class _StopRequest:
    """Turns SIGTERM / SIGINT into a flag the loop checks between steps (a second signal acts at once)."""

    def __init__(self):
        import signal

        self.requested = False
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum, frame):
        import signal

        if self.requested:  # asked twice: stop now
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)


# --------------------------------------------------------------------------------------------------
# The loop


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.rank, self.world, self.device = setup_distributed()
        self.log = (lambda msg: print(msg, flush=True)) if self.rank == 0 else (lambda msg: None)
        c = cfg
        if c.optim.prompts_per_step % self.world:
            raise ConfigError(f"optim.prompts_per_step={c.optim.prompts_per_step} must be divisible by the "
                             f"number of ranks ({self.world})")
        if c.optim.prompts_per_step < self.world:
            raise ConfigError(f"optim.prompts_per_step={c.optim.prompts_per_step} is smaller than the number of "
                             f"ranks ({self.world}): every rank needs at least one prompt")
        torch.manual_seed(step_seed(c.run.seed, 0, self.rank, salt=1))

        # Data and model directory (checked before anything expensive).
        train, ev, instruction = load_task(c)
        self.model_dir = prepare_model_dir(c, self.rank, self.log)
        self.tok = load_tokenizer(self.model_dir)
        self.train = tokenize_prompts(train, self.tok, c, instruction, "training", self.log)
        self.eval = tokenize_prompts(ev, self.tok, c, instruction, "eval", self.log)

        # Policy: fp32 master weights; on CUDA bf16 compute via FSDP2's mixed precision.
        self.compute_dtype = resolve_dtype(c.model.dtype, self.device)
        lm = load_model(self.model_dir, torch.float32, self.device, c.model.attn_implementation)
        self.policy = shard(PolicyWithHead(lm), self.device, self.compute_dtype, c.model.activation_checkpointing)
        self.ref = None
        if c.algo.kl_coef > 0:
            ref_lm = load_model(self.model_dir, torch.float32, self.device, c.model.attn_implementation)
            ref_lm.requires_grad_(False)
            self.ref = shard(PolicyWithHead(ref_lm), self.device, self.compute_dtype)
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=c.optim.lr, betas=c.optim.betas,
                                     weight_decay=c.optim.weight_decay)
        warm = c.optim.warmup_steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.engine = make_engine(c.rollout.engine, self.model_dir, device=self.device, dtype=self.compute_dtype,
                                  tokenizer=self.tok, gpu_memory_utilization=c.rollout.gpu_memory_utilization,
                                  seed=c.run.seed)
        self.grade_workers = c.algo.grade_workers or max(1, (os.cpu_count() or 1) // self.world)
        self.start_step = 0
        self.nonfinite_in_a_row = 0
        resume_path = ckpt.latest_checkpoint(c.run.output_dir) if c.run.resume else None
        if c.run.resume and resume_path is None:
            self.log(f"--resume: no complete checkpoint in {ckpt.checkpoint_root(c.run.output_dir)}; starting fresh")
        if resume_path:
            state = ckpt.load_checkpoint(resume_path, self.policy, self.opt)
            self.sched.load_state_dict(state["scheduler"])
            self.start_step = state["step"]
            self.nonfinite_in_a_row = state.get("nonfinite_in_a_row", 0)
            self.log(f"resumed from {resume_path} at step {self.start_step}")
        # The engine loaded the base weights from disk; from here on it gets weights only by sync.
        if resume_path:
            sync_weights(self.policy, self.engine, c.rollout.sync_bucket_mb * 2**20)
        self.metrics = MetricsLogger(c.run.output_dir, enabled=self.rank == 0,
                                     resume_from_step=self.start_step if resume_path else None)
        if self.rank == 0:
            import yaml

            with open(os.path.join(c.run.output_dir, "config.yaml"), "w") as f:
                yaml.safe_dump(c.to_dict(), f, sort_keys=False)

    # ----------------------------------------------------------------------------------------------
    def fit(self) -> None:
        c = self.cfg
        self.log(f"lead_fast: {self.world} rank(s) on {self.device}, model {self.model_dir}, "
                 f"{len(self.train)} training / {len(self.eval)} eval prompts, steps {self.start_step}..{c.run.max_steps}")
        get_pool(self.grade_workers)  # start the grading workers before the first step needs them
        stop = _StopRequest()
        for step in range(self.start_step, c.run.max_steps):
            row = {"step": step + 1}
            if c.run.eval_every and step == self.start_step == 0:
                self.metrics.log({"step": 0, **self.evaluate()})
            row.update(self.train_step(step))
            last = step + 1 == c.run.max_steps
            if c.run.eval_every and ((step + 1) % c.run.eval_every == 0 or last):
                row.update(self.evaluate())
            self.metrics.log(row)
            # A SIGTERM/SIGINT (preemption, Ctrl-C) on any rank: finish this step, save, stop.
            interrupted = all_max(int(stop.requested), self.device) > 0
            if (c.run.save_every and (step + 1) % c.run.save_every == 0) or last or interrupted:
                self.save(step + 1)
            if interrupted:
                self.log(f"stopped by signal after step {step + 1}; continue with --resume")
                break
        stop.restore()
        dist.barrier()
        if self.rank == 0 and os.path.exists(self.metrics.path):
            png = plot_metrics(self.metrics.path, os.path.join(c.run.output_dir, "metrics.png"))
            self.log(f"wrote {self.metrics.path} and {png}")

    def save(self, step: int) -> None:
        t0 = time.time()
        state = dict(step=step, scheduler=self.sched.state_dict(), nonfinite_in_a_row=self.nonfinite_in_a_row,
                     data_position=step * self.cfg.optim.prompts_per_step, world_size=self.world,
                     config=self.cfg.to_dict())
        path = ckpt.save_checkpoint(self.cfg.run.output_dir, step, self.policy, self.opt, state,
                                    keep_last=self.cfg.run.keep_last)
        self.log(f"saved {path} in {time.time() - t0:.1f}s")

    # ----------------------------------------------------------------------------------------------
    def train_step(self, step: int) -> dict:
        c = self.cfg
        t_step = time.time()

        # 1. this rank's prompts
        idx = prompts_for_step(len(self.train), step, c.optim.prompts_per_step, self.rank, self.world, c.run.seed)
        prompts = [self.train[i][0] for i in idx]
        answers = [self.train[i][1] for i in idx]

        # 2. rollouts: n responses per prompt
        t0 = time.time()
        self.engine.wake_up()
        groups = self.engine.generate(prompts, SamplingSettings(
            n=c.rollout.n, temperature=c.rollout.temperature, top_p=c.rollout.top_p,
            max_new_tokens=c.rollout.max_new_tokens, seed=step_seed(c.run.seed, step, self.rank)))
        self.engine.sleep()
        t_rollout = time.time() - t0
        responses = [r for g in groups for r in g]
        group_ids = torch.tensor([i for i, g in enumerate(groups) for _ in g])
        lengths = torch.tensor([len(r) for r in responses], dtype=torch.float64)

        # 3. grade
        t0 = time.time()
        texts = self.tok.batch_decode(responses, skip_special_tokens=True)
        pool = get_pool(self.grade_workers)
        timeouts_before = pool.timeouts
        outcomes = grade_batch(texts, [answers[i] for i in group_ids.tolist()], timeout_s=c.algo.grade_timeout_s,
                               num_workers=self.grade_workers, require_think=c.algo.require_think)
        grade_timeouts = pool.timeouts - timeouts_before
        t_grade = time.time() - t0

        # 4-5. rewards, advantages; drop groups without signal
        a = c.algo
        rewards = lead_rewards(outcomes, lengths, group_ids, alpha=a.alpha, correct_reward=a.correct_reward,
                               incorrect_reward=a.incorrect_reward, format_error_reward=a.format_error_reward,
                               degenerate_reward=a.degenerate_reward, min_short_len=a.min_short_len)
        adv, rho = lead_advantages(rewards, group_ids, reweight=False)  # w(rho) is applied in the loss head
        keep = ~groups_without_signal(rewards, group_ids) if a.drop_no_signal else torch.ones_like(rewards, dtype=torch.bool)
        samples = [Sample(prompts[g], responses[i], float(adv[i]), float(rho[i]))
                   for i, g in enumerate(group_ids.tolist()) if keep[i]]
        n_groups = len(groups)
        dropped = n_groups - len(set(group_ids[keep].tolist()))

        # 6-7. update
        t0 = time.time()
        upd = self.update(samples, step, fallback=Sample(prompts[0], responses[0] or [self.tok.eos_token_id], 0.0, 0.0))
        t_update = time.time() - t0

        # 8. sync weights into the rollout engine
        t0 = time.time()
        if upd["updated"]:
            sync_weights(self.policy, self.engine, c.rollout.sync_bucket_mb * 2**20)
        t_sync = time.time() - t0

        # 9. metrics (summed over ranks)
        o = torch.tensor(outcomes)
        tot = all_sum([len(responses), float((o == 1).sum()), float(rewards.sum()), float(lengths.sum()),
                       float((o == -1).sum()), float((o == -2).sum()), dropped, n_groups, grade_timeouts], self.device)
        n_resp = max(tot[0], 1.0)
        t_step = time.time() - t_step
        return {
            "loss": upd["loss"], "reward/mean": tot[2] / n_resp, "accuracy": tot[1] / n_resp,
            "response_length/mean": tot[3] / n_resp, "no_answer_frac": tot[4] / n_resp,
            "degenerate_frac": tot[5] / n_resp, "clip_frac": upd["clip_frac"], "kl": upd["kl"],
            "entropy": upd["entropy"], "grad_norm": upd["grad_norm"], "lr": self.sched.get_last_lr()[0],
            "groups_dropped": int(tot[6]), "groups": int(tot[7]), "grade_timeouts": int(tot[8]),
            "nonfinite_skipped": upd["nonfinite_skipped"],
            "time/rollout_s": t_rollout, "time/grade_s": t_grade, "time/update_s": t_update, "time/sync_s": t_sync,
            "time/step_s": t_step, "tokens_per_s": tot[3] / max(t_step, 1e-9),
        }

    def _forward_logprobs(self, model, samples, filler) -> None:
        """Old-policy or reference log-probs for each sample (no graph)."""
        plan = pad_plan(plan_micro_batches(samples, self.cfg.optim.micro_batch_tokens), self.device, filler)
        out = []
        with torch.no_grad():
            for batch, real in plan:
                b = collate(batch, self.tok.pad_token_id, self.device, 0.0)
                lp = model(b["input_ids"], b["attention_mask"], b["positions"], b["targets"], mode="logprobs",
                           temperature=self.cfg.rollout.temperature, backend=self.cfg.optim.loss_backend,
                           chunk_size=self.cfg.optim.loss_chunk_size or None)
                if real:
                    out.append((batch, lp.cpu()))
        return out

    def update(self, samples: list[Sample], step: int, fallback: Sample) -> dict:
        c, a = self.cfg, self.cfg.algo
        n_local = sum(len(s.response) for s in samples)
        n_global = all_sum([n_local], self.device)[0]
        empty = dict(loss=float("nan"), clip_frac=float("nan"), kl=float("nan"), entropy=float("nan"),
                     grad_norm=float("nan"), updated=False, nonfinite_skipped=0)
        if n_global == 0:  # every group on every rank had no signal
            return empty
        filler = samples[0] if samples else fallback
        U = c.optim.updates_per_batch
        if self.ref is not None:
            for batch, lp in self._forward_logprobs(self.ref, samples, filler):
                self._scatter(batch, lp, "ref_logprobs")
        if U > 1:
            for batch, lp in self._forward_logprobs(self.policy, samples, filler):
                self._scatter(batch, lp, "old_logprobs")
        rng = random.Random(step_seed(c.run.seed, step, self.rank, salt=2))
        order = samples[:]
        rng.shuffle(order)
        minis = [order[i::U] for i in range(U)]
        sums = torch.zeros(5, dtype=torch.float64, device=self.device)  # loss, clipped, kl, entropy, tokens
        grad_norm, skipped = float("nan"), 0
        for mini in minis:
            n_mini = all_sum([sum(len(s.response) for s in mini)], self.device)[0]
            if n_mini == 0:
                continue
            # token mean over the mini-batch across ranks; FSDP2 averages gradients over ranks, so x world
            tw = self.world / n_mini
            plan = pad_plan(plan_micro_batches(mini, c.optim.micro_batch_tokens), self.device,
                            mini[0] if mini else filler)
            mb_sums = torch.zeros(5, dtype=torch.float64, device=self.device)
            for k, (batch, real) in enumerate(plan):
                self.policy.set_requires_gradient_sync(k == len(plan) - 1)
                b = collate(batch, self.tok.pad_token_id, self.device, tw if real else 0.0)
                if not real:
                    b["advantages"].zero_()
                out = self.policy(
                    b["input_ids"], b["attention_mask"], b["positions"], b["targets"], mode="loss",
                    advantages=b["advantages"], token_weights=b["token_weights"],
                    old_logprobs=b["old_logprobs"] if U > 1 else None,
                    ref_logprobs=b["ref_logprobs"] if self.ref is not None else None,
                    clip_low=a.clip_low, clip_high=a.clip_high, kl_coef=a.kl_coef, entropy_coef=a.entropy_coef,
                    temperature=c.rollout.temperature,
                    correct_ratio=b["correct_ratio"] if a.reweight else None, w_min=a.w_min, w_max=a.w_max,
                    midpoint=a.midpoint, steepness=a.steepness, backend=c.optim.loss_backend,
                    chunk_size=c.optim.loss_chunk_size or None)
                out.loss.backward()
                if real:
                    w = b["token_weights"].double() / self.world     # per-token share of the global mean
                    mb_sums += torch.stack([out.loss.detach().double() / self.world, (out.clipped.double() * w).sum(),
                                            (out.kl.double() * w).sum(), (out.entropy.double() * w).sum(),
                                            w.sum()])
            dist.all_reduce(mb_sums)
            gn = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), c.optim.grad_clip or float("inf"))
            gn = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
            if not (math.isfinite(gn) and math.isfinite(float(mb_sums[0]))):
                skipped += 1
                self.nonfinite_in_a_row += 1
                self.opt.zero_grad(set_to_none=True)
                self.log(f"WARNING: step {step + 1}: non-finite loss or gradient (loss={float(mb_sums[0])}, "
                         f"grad_norm={gn}); skipped ({self.nonfinite_in_a_row} in a row)")
                if self.nonfinite_in_a_row >= c.run.max_nonfinite_steps:
                    raise RuntimeError(f"{self.nonfinite_in_a_row} steps in a row had a non-finite loss or gradient "
                                       f"(run.max_nonfinite_steps={c.run.max_nonfinite_steps}); stopping")
                continue
            self.nonfinite_in_a_row = 0
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            sums += mb_sums
            grad_norm = gn
        self.policy.set_requires_gradient_sync(True)
        done = len(minis) - skipped
        if done == 0:
            return {**empty, "nonfinite_skipped": skipped}
        return dict(loss=float(sums[0]) / done, clip_frac=float(sums[1] / sums[4]), kl=float(sums[2] / sums[4]),
                    entropy=float(sums[3] / sums[4]), grad_norm=grad_norm, updated=True, nonfinite_skipped=skipped)

    @staticmethod
    def _scatter(batch: list[Sample], lp: torch.Tensor, attr: str) -> None:
        # collate packs rows in batch order, each row's response tokens contiguous
        o = 0
        for s in batch:
            setattr(s, attr, lp[o: o + len(s.response)])
            o += len(s.response)

    # ----------------------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Accuracy and mean response length on this rank's share of the eval prompts, summed over ranks.
        The sampling seed is the same at every eval, so changes come from the weights alone."""
        c = self.cfg
        mine = self.eval[self.rank::self.world]
        t0 = time.time()
        correct = length = count = 0.0
        if mine:
            self.engine.wake_up()
            groups = self.engine.generate([p for p, _ in mine], SamplingSettings(
                n=c.rollout.eval_n, temperature=c.rollout.eval_temperature, top_p=1.0,
                max_new_tokens=c.rollout.max_new_tokens, seed=step_seed(c.run.seed, 0, self.rank, salt=3)))
            self.engine.sleep()
            resp = [r for g in groups for r in g]
            ans = [a for (_, a), g in zip(mine, groups) for _ in g]
            out = grade_batch(self.tok.batch_decode(resp, skip_special_tokens=True), ans,
                              timeout_s=c.algo.grade_timeout_s, num_workers=self.grade_workers,
                              require_think=c.algo.require_think)
            correct, length, count = sum(o == 1 for o in out), sum(len(r) for r in resp), len(resp)
        correct, length, count = all_sum([correct, length, count], self.device)
        return {"eval/accuracy": correct / max(count, 1), "eval/response_length": length / max(count, 1),
                "time/eval_s": time.time() - t0}
