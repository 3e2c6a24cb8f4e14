"""The GRPO-LEAD loop, top to bottom.

Choices this loop makes (GRPO-LEAD, arXiv 2504.09696, and its official recipe; docs/design.md has the
definitions):
- rewards: outcome rewards with an explicit penalty for wrong answers, length-regularized among each
  group's correct responses (``lead_rewards``); grading by math-verify in worker processes;
- advantages: group-normalized, reweighted by problem difficulty; the weight ``w(rho)`` / ``w(1-rho)`` is
  applied inside the loss head from each token's group ``correct_ratio``;
- groups whose rewards are all equal are dropped (no signal), and by default groups with no reward > 0
  (the official filter), each counted;
- loss: clipped policy gradient, aggregated over each mini-batch across ranks as a token mean or a mean
  of per-sequence token means (``algo.loss_agg``, ``update.py``), optional k3 KL to a frozen reference and
  entropy bonus;
- one optimizer step per rollout batch by default: on-policy, so no old-policy pass;
- every rank generates, grades and computes advantages for its own prompts (groups never span ranks);
  all sampling and shuffling derive from ``(seed, step, rank)``, so a resumed run repeats exactly.

One step: this rank's prompts -> rollouts -> grade -> rewards -> advantages (drop groups without signal)
-> update -> sync weights into the rollout engine -> metrics; eval and checkpoints between steps.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lead_fast import run_dir
from lead_fast.algo import grade_batch, group_drop_reasons, lead_advantages, lead_rewards
from lead_fast.algo.grading_pool import get_pool
from lead_fast.checkpoint import Checkpointer
from lead_fast.config import ConfigError, TrainConfig
from lead_fast.data import load_task, prompts_for_step, tokenize_prompts
from lead_fast.distributed import all_sum, setup_distributed, step_seed
from lead_fast.metrics import MetricsLogger, plot_metrics
from lead_fast.model import PolicyWithHead, load_model, load_tokenizer, resolve_dtype, shard
from lead_fast.preemption import StopRequest
from lead_fast.rollout import SamplingSettings, make_engine
from lead_fast.update import Sample, Updater


@dataclass
class Rollouts:
    """Responses to a list of prompts, graded; response ``i`` answers prompt ``group_ids[i]``."""

    responses: list[list[int]]
    group_ids: torch.Tensor     # (R,)
    lengths: torch.Tensor       # (R,) float64, tokens
    outcomes: list[int]         # (R,) 1 / 0 / -1 / -2
    grade_timeouts: int
    rollout_s: float
    grade_s: float


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = c = cfg
        self.rank, self.world, self.device = setup_distributed()
        self.log = (lambda msg: print(msg, flush=True)) if self.rank == 0 else (lambda msg: None)
        if c.optim.prompts_per_step % self.world:
            raise ConfigError(f"optim.prompts_per_step={c.optim.prompts_per_step} must be divisible by the "
                              f"number of ranks ({self.world})")
        if c.optim.prompts_per_step < self.world:
            raise ConfigError(f"optim.prompts_per_step={c.optim.prompts_per_step} is smaller than the number of "
                              f"ranks ({self.world}): every rank needs at least one prompt")
        torch.manual_seed(step_seed(c.run.seed, 0, self.rank, salt=1))

        # Data, output directory and model directory, checked before anything expensive. Paths are made
        # absolute so that the run's config reads the same from any working directory.
        for sec, key in (("model", "path"), ("data", "path"), ("data", "eval_path"), ("run", "output_dir")):
            if getattr(getattr(c, sec), key) is not None:
                setattr(getattr(c, sec), key, os.path.abspath(getattr(getattr(c, sec), key)))
        train, ev, instruction = load_task(c)
        self._agree(lambda: run_dir.prepare(c.run.output_dir, resume=c.run.resume, overwrite=c.run.overwrite))
        if c.model.path is None:
            from lead_fast.demo import prepare_model_dir

            self.model_dir = prepare_model_dir(c.run.output_dir, steps=c.run.warm_start_steps, seed=c.run.seed,
                                               rank=self.rank, log=self.log)
        else:
            self.model_dir = c.model.path
        self.tok = load_tokenizer(self.model_dir)
        prompt_kw = dict(instruction=instruction, template=c.data.template, max_tokens=c.data.max_prompt_tokens,
                         log=self.log)
        self.train = tokenize_prompts(train, self.tok, what="training", **prompt_kw)
        self.eval = tokenize_prompts(ev, self.tok, what="eval", **prompt_kw)
        if c.run.epochs > 0:
            c.run.max_steps = math.ceil(c.run.epochs * len(self.train) / c.optim.prompts_per_step)

        # Policy: fp32 master weights; on CUDA bf16 compute via FSDP2's mixed precision.
        dtype = resolve_dtype(c.model.dtype, self.device)
        lm = load_model(self.model_dir, torch.float32, self.device, c.model.attn_implementation)
        # one checkpoint: fp32 weights and AdamW's two moments, plus 5% for metadata and the rest
        need = int(1.05 * 12 * sum(p.numel() for p in lm.parameters()))
        self._agree(lambda: run_dir.check_free_space(c.run.output_dir, need))
        self.policy = shard(PolicyWithHead(lm), self.device, dtype, c.model.activation_checkpointing)
        ref = None
        if c.algo.kl_coef > 0:
            ref_lm = load_model(self.model_dir, torch.float32, self.device, c.model.attn_implementation)
            ref = shard(PolicyWithHead(ref_lm.requires_grad_(False)), self.device, dtype)
        opt = torch.optim.AdamW(self.policy.parameters(), lr=c.optim.lr, betas=c.optim.betas,
                                weight_decay=c.optim.weight_decay)
        warm = c.optim.warmup_steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        self.updater = Updater(c, policy=self.policy, ref=ref, optimizer=opt, scheduler=self.sched,
                               pad_id=self.tok.pad_token_id, device=self.device, rank=self.rank, world=self.world,
                               log=self.log)
        self.engine = make_engine(c.rollout.engine, self.model_dir, device=self.device, dtype=dtype, tokenizer=self.tok,
                                  seed=c.run.seed, max_model_len=c.data.max_prompt_tokens + c.rollout.max_new_tokens,
                                  gpu_memory_utilization=c.rollout.gpu_memory_utilization,
                                  sync_bucket_mb=c.rollout.sync_bucket_mb)
        self.grade_workers = c.algo.grade_workers or max(1, (os.cpu_count() or 1) // self.world)

        # Resume: weights, optimizer, scheduler and counters; the engine then gets the resumed weights
        # (it loaded the base model from disk, and from here on receives weights only by sync).
        self.checkpointer = Checkpointer(c.run.output_dir, save_every=c.run.save_every, keep_last=c.run.keep_last,
                                         model=self.policy, optimizer=opt, state=self._state, log=self.log)
        self.start_step = 0
        resumed = self.checkpointer.resume() if c.run.resume else None
        if resumed:
            self.sched.load_state_dict(resumed["scheduler"])
            self.start_step = resumed["step"]
            self.updater.nonfinite_in_a_row = resumed.get("nonfinite_in_a_row", 0)
            self.engine.update_weights(self.policy.hf_named_tensors())
        self.metrics = MetricsLogger(c.run.output_dir, enabled=self.rank == 0,
                                     resume_from_step=self.start_step if resumed else None)
        if self.rank == 0:
            import yaml

            with open(os.path.join(c.run.output_dir, "config.yaml"), "w") as f:
                yaml.safe_dump(c.to_dict(), f, sort_keys=False)

    def _agree(self, check) -> None:
        """Run ``check`` on rank 0 (the output directory is shared) and raise its error on every rank."""
        error = None
        if self.rank == 0:
            try:
                check()
            except run_dir.OutputDirError as e:
                error = str(e)
        box = [error]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None:
            raise run_dir.OutputDirError(box[0])

    def _state(self) -> dict:
        """What a checkpoint keeps besides the weights and the optimizer."""
        return dict(scheduler=self.sched.state_dict(), nonfinite_in_a_row=self.updater.nonfinite_in_a_row,
                    config=self.cfg.to_dict())

    # ----------------------------------------------------------------------------------------------
    def fit(self) -> None:
        c = self.cfg
        self.log(f"lead_fast: {self.world} rank(s) on {self.device}, model {self.model_dir}, {len(self.train)} "
                 f"training / {len(self.eval)} eval prompts, steps {self.start_step}..{c.run.max_steps}")
        get_pool(self.grade_workers)  # start the grading workers before the first step needs them
        with StopRequest() as stop:
            for step in range(self.start_step, c.run.max_steps):
                if c.run.eval_every and step == self.start_step == 0:
                    self.metrics.log({"step": 0, **self.evaluate()})
                row = {"step": step + 1, **self.step(step)}
                last = step + 1 == c.run.max_steps
                if c.run.eval_every and ((step + 1) % c.run.eval_every == 0 or last):
                    row.update(self.evaluate())
                self.metrics.log(row)
                # SIGTERM / SIGINT on any rank (preemption, Ctrl-C): finish this step, save, stop.
                interrupted = stop.agreed(self.device)
                self.checkpointer.maybe_save(step + 1, last=last, force=interrupted)
                if interrupted:
                    self.log(f"stopped by signal after step {step + 1}; continue with --resume")
                    break
        dist.barrier()
        if self.rank == 0 and os.path.exists(self.metrics.path):
            png = plot_metrics(self.metrics.path, os.path.join(c.run.output_dir, "metrics.png"))
            self.log(f"wrote {self.metrics.path} and {png}")

    def step(self, step: int) -> dict:
        c, a = self.cfg, self.cfg.algo
        t_step = time.time()

        # 1-3. this rank's prompts, n responses each, graded
        idx = prompts_for_step(len(self.train), step, c.optim.prompts_per_step, self.rank, self.world, c.run.seed)
        prompts = [self.train[i][0] for i in idx]
        answers = [self.train[i][1] for i in idx]
        ro = self.rollout_and_grade(prompts, answers, SamplingSettings(
            n=c.rollout.n, temperature=c.rollout.temperature, top_p=c.rollout.top_p,
            max_new_tokens=c.rollout.max_new_tokens, seed=step_seed(c.run.seed, step, self.rank),
            stop=tuple(c.rollout.stop)))

        # 4. rewards: outcome, explicit penalties, length-regularized among correct responses
        rewards = lead_rewards(ro.outcomes, ro.lengths, ro.group_ids, alpha=a.alpha, correct_reward=a.correct_reward,
                               incorrect_reward=a.incorrect_reward, format_error_reward=a.format_error_reward,
                               degenerate_reward=a.degenerate_reward, min_short_len=a.min_short_len)

        # 5. advantages, group-normalized; the difficulty weight w(rho) is applied in the loss head
        advantages, correct_ratio = lead_advantages(rewards, ro.group_ids, reweight=False)
        all_equal, no_correct = group_drop_reasons(rewards, ro.group_ids)
        no_correct &= ~all_equal & a.drop_no_correct        # counted once, under the first reason
        keep = ~(all_equal | no_correct) if a.drop_no_signal else torch.ones_like(all_equal)
        samples = [Sample(prompts[g], ro.responses[i], float(advantages[i]), float(correct_ratio[i]))
                   for i, g in enumerate(ro.group_ids.tolist()) if keep[i]]

        # 6-7. update (old / reference passes, micro-batches, clip, optimizer step)
        t0 = time.time()
        upd = self.updater.update(samples, step, sampled=c.optim.prompts_per_step * c.rollout.n)
        t_update = time.time() - t0

        # 8. the rollout engine gets the new weights
        t0 = time.time()
        if upd["updated"]:
            self.engine.update_weights(self.policy.hf_named_tensors())
        t_sync = time.time() - t0

        # 9. metrics, summed over ranks by name
        outcomes = torch.tensor(ro.outcomes)
        tot = all_sum({"responses": len(ro.responses), "correct": (outcomes == 1).sum(),
                       "no_answer": (outcomes == -1).sum(), "degenerate": (outcomes == -2).sum(),
                       "reward": rewards.sum(), "tokens": ro.lengths.sum(), "groups": len(prompts),
                       "groups_dropped": len(prompts) - len(set(ro.group_ids[keep].tolist())),
                       "dropped_all_equal": len(set(ro.group_ids[all_equal & ~keep].tolist())),
                       "dropped_no_correct": len(set(ro.group_ids[no_correct & ~keep].tolist())),
                       "grade_timeouts": ro.grade_timeouts}, self.device)
        n = max(tot["responses"], 1.0)
        t_step = time.time() - t_step
        return {
            "loss": upd["loss"], "reward/mean": tot["reward"] / n, "accuracy": tot["correct"] / n,
            "response_length/mean": tot["tokens"] / n, "no_answer_frac": tot["no_answer"] / n,
            "degenerate_frac": tot["degenerate"] / n, "clip_frac": upd["clip_frac"], "kl": upd["kl"],
            "entropy": upd["entropy"], "grad_norm": upd["grad_norm"], "lr": self.sched.get_last_lr()[0],
            "groups_dropped": int(tot["groups_dropped"]), "groups": int(tot["groups"]),
            "groups_dropped/all_equal": int(tot["dropped_all_equal"]),
            "groups_dropped/no_correct": int(tot["dropped_no_correct"]),
            "grade_timeouts": int(tot["grade_timeouts"]), "nonfinite_skipped": upd["nonfinite_skipped"],
            "time/rollout_s": ro.rollout_s, "time/grade_s": ro.grade_s, "time/update_s": t_update,
            "time/sync_s": t_sync, "time/step_s": t_step, "tokens_per_s": tot["tokens"] / max(t_step, 1e-9),
        }

    def rollout_and_grade(self, prompts: list[list[int]], answers: list[str], settings: SamplingSettings) -> Rollouts:
        """Generate ``settings.n`` responses per prompt and grade each against its prompt's answer."""
        t0 = time.time()
        groups = self.engine.generate(prompts, settings) if prompts else []
        rollout_s = time.time() - t0
        responses = [comp.token_ids for g in groups for comp in g]
        group_ids = [i for i, g in enumerate(groups) for _ in g]
        t0 = time.time()
        texts = self.tok.batch_decode(responses, skip_special_tokens=True)
        a = self.cfg.algo
        outcomes, timeouts = grade_batch(texts, [answers[i] for i in group_ids], timeout_s=a.grade_timeout_s,
                                         num_workers=self.grade_workers, require_think=a.require_think,
                                         answer_from=a.answer_from, unboxed_is_wrong=a.unboxed_is_wrong,
                                         return_timeouts=True)
        return Rollouts(responses, torch.tensor(group_ids, dtype=torch.long),
                        torch.tensor([len(r) for r in responses], dtype=torch.float64), outcomes, timeouts,
                        rollout_s, time.time() - t0)

    def evaluate(self) -> dict:
        """Accuracy and mean response length on this rank's share of the eval prompts, summed over ranks.
        The sampling seed is the same at every eval, so changes come from the weights alone."""
        c = self.cfg
        t0 = time.time()
        mine = self.eval[self.rank::self.world]
        ro = self.rollout_and_grade([p for p, _ in mine], [a for _, a in mine], SamplingSettings(
            n=c.rollout.eval_n, temperature=c.rollout.eval_temperature, top_p=1.0,
            max_new_tokens=c.rollout.max_new_tokens, seed=step_seed(c.run.seed, 0, self.rank, salt=3),
            stop=tuple(c.rollout.stop)))
        tot = all_sum({"correct": sum(o == 1 for o in ro.outcomes), "tokens": ro.lengths.sum(),
                       "responses": len(ro.responses)}, self.device)
        n = max(tot["responses"], 1.0)
        return {"eval/accuracy": tot["correct"] / n, "eval/response_length": tot["tokens"] / n,
                "time/eval_s": time.time() - t0}

    def close(self) -> None:
        self.engine.close()
