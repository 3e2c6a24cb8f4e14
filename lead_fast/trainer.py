"""The GRPO-LEAD loop, top to bottom.

Choices this loop makes (GRPO-LEAD, arXiv 2504.09696, its official recipe; definitions in docs/design.md):
- rewards: the reward functions' weighted sum (``algo.reward_funcs``; by default math-verify grading, with an
  explicit penalty for wrong answers), length-regularized among each group's rewards > 0;
- advantages: group-normalized, reweighted by difficulty (``w(rho)`` / ``w(1-rho)``, applied in the loss head
  from each token's group ``correct_ratio``); groups without signal dropped, each reason counted;
- loss: clipped policy gradient aggregated over each mini-batch across ranks (``algo.loss_agg``), optional k3 KL
  to a frozen reference and entropy bonus; one on-policy optimizer step per rollout batch by default;
- every rank generates, grades and computes advantages for its own prompts (groups never span ranks); all
  sampling and shuffling derive from ``(seed, step, rank)``, so a resumed run repeats exactly.

One step: sync weights into the rollout engine -> this rank's prompts -> rollouts -> rewards -> advantages
(drop groups without signal) -> update -> metrics; eval (after its own sync) and checkpoints between steps.
Disaggregated (``rollout.mode``): rollout ranks generate and score (``generate``), trainer ranks learn
(``learn``) from batches up to ``rollout.max_staleness`` updates old (``lead_fast/disaggregated.py``).
"""

from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from lead_fast import build, disaggregated, run_dir
from lead_fast.algo import GradingRules, lead_advantages, length_regularized, select_groups
from lead_fast.algo.grading_pool import get_pool
from lead_fast.algo.reward_funcs import MATH, RewardFunctions, RewardSettings
from lead_fast.config import TrainConfig, check_world
from lead_fast.data import prompts_for_step
from lead_fast.distributed import all_max, all_sum, on_rank0, setup_distributed, step_seed, together
from lead_fast.errors import RolloutError
from lead_fast.metrics import NoSignalWatch, eval_counts, eval_metrics, plot_finished_run, step_counts, step_metrics
from lead_fast.model import load_tokenizer, resolve_dtype
from lead_fast.orders import Batch   # also what checkpoints pickled as lead_fast.trainer.Batch load as
from lead_fast.placement import place
from lead_fast.preemption import StopRequest
from lead_fast.rollout import SamplingSettings
from lead_fast.rollout.graded import GradedRollouts, rollout_and_score
from lead_fast.rollout.scoring import generate_and_score
from lead_fast.task import load_task
from lead_fast.update import Sample, save_samples


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.rank, self.world, self.device = setup_distributed()
        self.log = (lambda msg: print(msg, flush=True)) if self.rank == 0 else (lambda msg: None)
        check_world(cfg, self.world)
        # who generates and who trains; colocated: every rank both, disaggregated: split (lead_fast/placement.py)
        self.place = place(cfg.rollout.mode, cfg.rollout.ranks, self.device)
        self.tlog = (lambda msg: print(msg, flush=True)) if self.rank == self.place.lead_trainer else (lambda msg: None)
        # seeded by the rank's place among the trainers, so that a disaggregated run draws what a colocated one would
        torch.manual_seed(step_seed(cfg.run.seed, 0, self.place.train_rank if self.place.is_trainer else self.rank,
                                    salt=1))

        # Data, output and model directories checked before anything expensive; paths made absolute so that the
        # run's config reads the same anywhere. Gold answers: what the math reward and the eval grade against.
        cfg.make_paths_absolute()
        task = load_task(cfg.data, cfg.run.seed, need_answers=MATH in cfg.algo.reward_funcs or cfg.run.eval_every > 0)
        on_rank0(lambda: run_dir.prepare(cfg.run.output_dir, resume=cfg.run.resume, overwrite=cfg.run.overwrite))
        self.model_dir = build.model_dir(cfg, self.log)
        self.tok = load_tokenizer(self.model_dir, log=self.log)
        self.train, self.eval = build.prompts(cfg, task, self.tok, self.log)
        # pass@1 per level when the eval problems have a level column (the mixed task's do)
        self.eval_levels = tuple(sorted({str(lv) for p in self.eval if (lv := p.problem.columns.get("level"))}))

        dtype = resolve_dtype(cfg.model.dtype, self.device)
        self.policy = self.updater = self.checkpointer = self.engine = self.metrics = self.rewards = None
        self.start_step, self.resumed_batches = 0, []
        self._busy: list[tuple[float, float]] = []      # this trainer rank's last updates (start, end)
        self.no_signal = NoSignalWatch(cfg.run.max_no_signal_steps, log_row=lambda row: self.metrics.log(row))
        if self.place.is_trainer:
            side = build.training_side(cfg, self.place, self.model_dir, self.tok, self.device, dtype,
                                       is_lead=self.rank == self.place.lead_trainer, held_out=task.eval,
                                       log=self.tlog)
            self.policy, self.sched, self.updater = side.policy, side.sched, side.updater
            self.checkpointer, self.metrics = side.checkpointer, side.metrics
            self.start_step, self.resumed_batches = side.start_step, side.resumed_batches
        if self.place.is_rollout:
            self.engine = build.engine(cfg, self.place, self.model_dir, self.tok, self.device, dtype, len(self.eval))
        # One colocated rank holds the whole policy, in float32 like a CPU engine: the transformers engine
        # generates with the policy's own weights (no second copy; the optimizer's steps are its updates)
        self.engine_shares_weights = (self.place.is_trainer and self.place.is_rollout and self.place.train_world == 1
                                      and cfg.rollout.engine == "hf" and dtype == torch.float32)
        if self.engine_shares_weights:
            self.engine.share_weights(self.policy.hf_named_tensors(local=True))
            self.log("rollout engine: the transformers engine generates with the policy's own weights (one rank, "
                     "float32): no copy, no sync")
        self.grade_workers = build.grade_workers(cfg, self.world)
        self.reward_settings = RewardSettings.from_config(cfg.algo)
        if self.place.is_rollout:     # the user's reward functions imported (in their worker) before step 1
            self.rewards = RewardFunctions(self.reward_settings, grade_workers=self.grade_workers)
        self.rules = GradingRules(require_think=cfg.algo.require_think, answer_from=cfg.algo.answer_from,
                                  unboxed_is_wrong=cfg.algo.unboxed_is_wrong, timeout_s=cfg.algo.grade_timeout_s)

    # ----------------------------------------------------------------------------------------------
    def fit(self) -> None:
        cfg = self.cfg
        mode = (f"{len(self.place.rollout_ranks)} rollout + {self.place.train_world} trainer rank(s), max_staleness "
                f"{cfg.rollout.max_staleness}" if self.place.disaggregated else f"{self.world} rank(s)")
        self.tlog(f"lead_fast: {mode} on {self.device}, model {self.model_dir}, {len(self.train)} "
                  f"training / {len(self.eval)} eval prompts, steps {self.start_step}..{cfg.run.max_steps}")
        if self.place.is_rollout:
            get_pool(self.grade_workers)  # start the grading workers before the first step needs them
        if not self.place.disaggregated:
            self.train_colocated()
        elif self.place.is_rollout:
            disaggregated.serve_rollouts(self)
        else:
            disaggregated.train_disaggregated(self)
        dist.barrier()
        if self.metrics is not None and self.metrics.enabled and os.path.exists(self.metrics.path):
            plot_finished_run(self.metrics.path, os.path.join(cfg.run.output_dir, "metrics.png"), self.tlog)

    def train_colocated(self) -> None:
        cfg = self.cfg
        with StopRequest() as stop:
            for step in range(self.start_step, cfg.run.max_steps):
                done, row = step, None           # completed steps: what a failed rollout below saves
                try:
                    if cfg.run.eval_every and step == self.start_step == 0:
                        self.metrics.log({"step": 0, **self.evaluate()})
                    t0 = time.time()
                    sync_s = self.sync_engine()          # 1. the engine gets the current weights
                    idx, rollouts = together(lambda: self.generate(step, self.rank, self.world), self.device)
                    row = {"step": step + 1, **self.learn(step, Batch(step, step, idx, rollouts, 0.0), t0, sync_s)}
                    done, last = step + 1, step + 1 == cfg.run.max_steps
                    if cfg.run.eval_every and ((step + 1) % cfg.run.eval_every == 0 or last):
                        row.update(self.evaluate())
                except RolloutError as e:            # the engine's process died, say: keep what was trained
                    if row is not None:
                        self.metrics.log(row)
                    raise self.checkpointer.saved_for(done, str(e), started_at=self.start_step) from None
                self.metrics.log(row)
                # SIGTERM / SIGINT on any rank (preemption, Ctrl-C): finish this step, save, stop.
                interrupted = stop.agreed(self.device)
                self.checkpointer.maybe_save(step + 1, last=last, force=interrupted)
                if interrupted:
                    self.tlog(f"stopped by signal after step {step + 1}; continue with --resume")
                    break

    def generate(self, step: int, share: int, shares: int) -> tuple[list[int], GradedRollouts]:
        """2-3. Trainer share ``share`` of ``shares`` of step ``step``'s prompts, ``rollout.n`` responses each,
        graded. The same call on a colocated rank (its own share) and on a rollout rank (a trainer's)."""
        cfg = self.cfg
        idx = prompts_for_step(len(self.train), step, cfg.optim.prompts_per_step, share, shares, cfg.run.seed)
        rollouts = rollout_and_score(self.engine, self.tok, [self.train[i] for i in idx], SamplingSettings(
            n=cfg.rollout.n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
            max_new_tokens=cfg.rollout.max_new_tokens, seed=step_seed(cfg.run.seed, step, share),
            stop=tuple(cfg.rollout.stop)), self.rewards, step=step, max_steps=cfg.run.max_steps,
            progress=self.rank == 0)
        return idx, rollouts

    def learn(self, step: int, batch: Batch, t0: float, sync_s: float) -> dict:
        """4-8. One step's update on this trainer rank's share of a graded batch; returns the step's row."""
        cfg, algo = self.cfg, self.cfg.algo
        rollouts = batch.rollouts
        prompts = [self.train[i].ids for i in batch.idx]

        # 4. rewards: the reward functions' weighted sum, length-regularized among each group's rewards > 0
        rewards = length_regularized(rollouts.base_rewards(self.reward_settings.outcome_rewards), rollouts.lengths,
                                     rollouts.group_ids, alpha=algo.alpha, min_short_len=algo.min_short_len)

        # 5. advantages, group-normalized (the difficulty weight w(rho) is applied in the loss head); groups
        # without signal are dropped, and so is a batch older than rollout.max_staleness (the schedule never
        # makes one; the check is what keeps a stale batch out if it ever did)
        advantages, correct_ratio = lead_advantages(rewards, rollouts.group_ids, reweight=False,
                                                    eps=algo.advantage_eps, scale=algo.scale_rewards == "group")
        groups = select_groups(rewards, rollouts.group_ids, drop_no_signal=algo.drop_no_signal,
                               drop_no_correct=algo.drop_no_correct)
        fresh = step - batch.version <= cfg.rollout.max_staleness
        samples = [Sample(prompts[g], c.token_ids, float(advantages[i]), float(correct_ratio[i]),
                          rollout_logprobs=None if c.logprobs is None else torch.tensor(c.logprobs),
                          version=batch.version)
                   for i, (g, c) in enumerate(zip(rollouts.group_ids.tolist(), rollouts.completions))
                   if groups.keep[i] and fresh]

        # 6-7. update (old / reference passes, micro-batches, clip, optimizer step); its inputs saved first
        # when asked (run.save_samples), for lead_fast.replay
        num_sampled = cfg.optim.prompts_per_step * cfg.rollout.n
        if step < cfg.run.save_samples:
            save_samples(run_dir.samples_file(cfg.run.output_dir, step + 1, self.place.train_rank), samples,
                         step=step, num_sampled=num_sampled)
        t_update = time.time()
        update = self.updater.update(samples, step, num_sampled=num_sampled)
        update_s = time.time() - t_update
        # disaggregated: how long this batch's generation ran while an update ran (colocated: never); only the
        # last max_staleness + 2 updates can overlap it, so only they are kept
        self._busy = [*self._busy, (t_update, t_update + update_s)][-(cfg.rollout.max_staleness + 2):]
        g0, g1 = batch.busy
        overlap = sum(max(0.0, min(g1, b) - max(g0, a)) for a, b in self._busy)

        # 8. metrics, summed over ranks by name
        group = self.place.train_group
        tot = all_sum(dict(step_counts(rollouts, rewards, groups, len(prompts), tuple(algo.reward_funcs)),
                           staleness=step - batch.version,
                           stale_dropped=0 if fresh else len(rollouts.outcomes)), self.device, group)
        step_s = time.time() - t0
        seconds = dict(rollout=rollouts.rollout_s, grade=rollouts.grade_s, update=update_s, sync=sync_s,
                       slowest_rollout=all_max(rollouts.rollout_s, self.device, group), step=step_s,
                       wait=batch.wait_s, overlap=overlap)
        return self.no_signal.check(step + 1, step_metrics(tot, update, seconds, lr=self.sched.get_last_lr()[0],
                                                           shares=self.place.train_world))

    def sync_engine(self) -> float:
        """Hand the rollout engine the policy's current weights (a collective); returns seconds. Called
        before every generate: a colocated vLLM engine discards its weights after generating, and a
        skipped update or an eval in between must not leave it with stale or missing ones."""
        if self.engine_shares_weights:
            return 0.0
        t0 = time.time()
        self.engine.update_weights(self.policy.hf_named_tensors())
        return time.time() - t0

    def evaluate(self) -> dict:
        """pass@1, cons@n and mean response length on the eval problems, summed over ranks
        (``lead_fast.eval``'s scoring). The sampling seed is the same at every eval, so changes come
        from the weights alone. ``eval/accuracy`` is pass@1."""
        t0 = time.time()
        self.sync_engine()
        counts = together(lambda: self.eval_shares([self.rank], self.world), self.device)
        return eval_metrics(all_sum(counts, self.device), time.time() - t0)

    def eval_shares(self, shares: list[int], num_shares: int) -> dict:
        """Eval counts (``metrics.eval_counts``) over the eval problems of the given trainer shares: share
        ``t`` is every ``num_shares``-th problem from ``t``, sampled with share ``t``'s seed, so that any
        placement evaluates the same samples."""
        cfg, total = self.cfg, None
        for t in shares:
            mine = self.eval[t::num_shares]
            results, _ = generate_and_score(
                self.engine, self.tok, [p.ids for p in mine], [p.answer for p in mine], SamplingSettings(
                    n=cfg.rollout.eval_n, temperature=cfg.rollout.eval_temperature, top_p=1.0,
                    max_new_tokens=cfg.rollout.max_new_tokens, seed=step_seed(cfg.run.seed, 0, t, salt=3),
                    stop=tuple(cfg.rollout.stop)), self.rules, num_workers=self.grade_workers)
            counts = eval_counts(results, [str(p.problem.columns.get("level")) for p in mine], self.eval_levels)
            total = counts if total is None else {k: total[k] + counts[k] for k in total}
        return total

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        if self.rewards is not None:
            self.rewards.close()
        if self.metrics is not None:
            self.metrics.close()
