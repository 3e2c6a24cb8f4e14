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

One step: sync weights into the rollout engine -> this rank's prompts -> rollouts -> grade -> rewards ->
advantages (drop groups without signal) -> update -> metrics; eval (after its own sync) and checkpoints
between steps.
"""

from __future__ import annotations

import math
import os
import time

import torch
import torch.distributed as dist

from lead_fast import run_dir
from lead_fast.algo import group_drop_reasons, lead_advantages, lead_rewards
from lead_fast.algo.grading_pool import get_pool
from lead_fast.checkpoint import Checkpointer
from lead_fast.config import TrainConfig, check_world
from lead_fast.data import load_task, prompts_for_step, tokenize_prompts
from lead_fast.distributed import all_max, all_sum, setup_distributed, step_seed
from lead_fast.eval import generate_and_score
from lead_fast.metrics import MetricsLogger, plot_metrics
from lead_fast.model import (PolicyWithHead, apply_liger_kernels, check_context, load_model, load_tokenizer,
                             resolve_dtype, shard)
from lead_fast.preemption import StopRequest
from lead_fast.pretrained import resolve_model_path
from lead_fast.rollout import EngineMemory, SamplingSettings, make_engine
from lead_fast.rollout.graded import rollout_and_grade
from lead_fast.update import Sample, Updater


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.rank, self.world, self.device = setup_distributed()
        self.log = (lambda msg: print(msg, flush=True)) if self.rank == 0 else (lambda msg: None)
        check_world(cfg, self.world)
        torch.manual_seed(step_seed(cfg.run.seed, 0, self.rank, salt=1))

        # Data, output directory and model directory, checked before anything expensive. Paths are made
        # absolute so that the run's config reads the same from any working directory.
        cfg.make_paths_absolute()
        train, ev, instruction = load_task(cfg)
        run_dir.on_rank0(self.rank, lambda: run_dir.prepare(cfg.run.output_dir, resume=cfg.run.resume,
                                                            overwrite=cfg.run.overwrite))
        # The model: a directory, one built from the package index (pretrained:NAME), or the embedded tiny
        # model; a warm start (generated task only) writes OUTPUT_DIR/base_model from it.
        source = resolve_model_path(cfg.model.path, rank=self.rank, log=self.log)
        if source is None or cfg.run.warm_start_steps:
            from lead_fast.demo import prepare_model_dir

            self.model_dir = prepare_model_dir(cfg.run.output_dir, steps=cfg.run.warm_start_steps, seed=cfg.run.seed,
                                               rank=self.rank, source=source, log=self.log)
        else:
            self.model_dir = source
        check_context(self.model_dir, cfg.data.max_prompt_tokens, cfg.rollout.max_new_tokens,
                      flags="--data.max_prompt_tokens or --rollout.max_new_tokens")
        self.tok = load_tokenizer(self.model_dir, log=self.log)
        prompt_kw = dict(instruction=instruction, template=cfg.data.template, max_tokens=cfg.data.max_prompt_tokens,
                         preset=cfg.preset, log=self.log)
        self.train = tokenize_prompts(train, self.tok, what="training", **prompt_kw)
        self.eval = tokenize_prompts(ev, self.tok, what="eval", **prompt_kw)
        if cfg.run.epochs > 0:
            cfg.run.max_steps = math.ceil(cfg.run.epochs * len(self.train) / cfg.optim.prompts_per_step)
            self.log(f"run.epochs {cfg.run.epochs}: {cfg.run.max_steps} steps of {cfg.optim.prompts_per_step} prompts "
                     f"over {len(self.train)} training prompts")

        # Policy: fp32 master weights; on CUDA bf16 compute via FSDP2's mixed precision.
        dtype = resolve_dtype(cfg.model.dtype, self.device)
        lm = load_model(self.model_dir, torch.float32, self.device, cfg.model.attn_implementation)
        kernels = apply_liger_kernels(lm, cfg.model.liger_kernels, self.device)
        self.log(f"Liger kernels: {', '.join(kernels) or 'off'}")
        # one checkpoint: fp32 weights and AdamW's two moments, plus 5% for metadata and the rest
        need = int(1.05 * 12 * sum(p.numel() for p in lm.parameters()))
        run_dir.on_rank0(self.rank, lambda: run_dir.check_free_space(cfg.run.output_dir, need))
        self.policy = shard(PolicyWithHead(lm), self.device, dtype, cfg.model.activation_checkpointing)
        ref = None
        if cfg.algo.kl_coef > 0:
            ref_lm = load_model(self.model_dir, torch.float32, self.device, cfg.model.attn_implementation)
            apply_liger_kernels(ref_lm, cfg.model.liger_kernels, self.device)
            ref = shard(PolicyWithHead(ref_lm.requires_grad_(False)), self.device, dtype)
        opt = torch.optim.AdamW(self.policy.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                                weight_decay=cfg.optim.weight_decay)
        warm = cfg.optim.warmup_steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: min(1.0, (n + 1) / warm) if warm else 1.0)
        self.updater = Updater(cfg, policy=self.policy, ref=ref, optimizer=opt, scheduler=self.sched,
                               pad_id=self.tok.pad_token_id, device=self.device, rank=self.rank, world=self.world,
                               log=self.log)
        self.engine = make_engine(cfg.rollout.engine, self.model_dir, device=self.device, dtype=dtype,
                                  tokenizer=self.tok, seed=cfg.run.seed,
                                  max_model_len=cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens,
                                  memory=self._engine_memory(), colocated=True, logprobs=cfg.rollout.logprobs,
                                  hf_batching=cfg.rollout.hf_batching, enforce_eager=cfg.rollout.enforce_eager)
        # grading workers share this node's cores with the other ranks on it (not the whole world's)
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        self.grade_workers = cfg.algo.grade_workers or max(1, (os.cpu_count() or 1) // local_world)

        # Resume: weights, optimizer, scheduler and counters. The engine loaded the base model from disk;
        # from here on it receives weights only by sync, before every generate.
        self.checkpointer = Checkpointer(cfg.run.output_dir, save_every=cfg.run.save_every, keep_last=cfg.run.keep_last,
                                         model=self.policy, optimizer=opt, state=self._state, log=self.log)
        self.start_step = 0
        resumed = self.checkpointer.resume() if cfg.run.resume else None
        if resumed:
            self.sched.load_state_dict(resumed["scheduler"])
            self.start_step = resumed["step"]
            self.updater.nonfinite_in_a_row = resumed.get("nonfinite_in_a_row", 0)
        self.metrics = MetricsLogger(cfg.run.output_dir, enabled=self.rank == 0,
                                     resume_from_step=self.start_step if resumed else None,
                                     report_to=tuple(cfg.run.report_to), config=cfg.to_dict(),
                                     max_steps=cfg.run.max_steps)
        if self.rank == 0:
            import yaml

            with open(os.path.join(cfg.run.output_dir, "config.yaml"), "w") as f:
                yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)

    def _engine_memory(self) -> EngineMemory:
        """The vLLM engine's memory: the config's settings, and the KV cache this rank's largest batch
        (training rollouts or its share of the eval) needs."""
        cfg = self.cfg
        sequences = max(-(-cfg.optim.prompts_per_step // self.world) * cfg.rollout.n,
                        -(-len(self.eval) // self.world) * cfg.rollout.eval_n)
        return EngineMemory(gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
                            kv_cache_gib=cfg.rollout.kv_cache_gib,
                            batch_tokens=sequences * (cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens))

    def _state(self) -> dict:
        """What a checkpoint keeps besides the weights and the optimizer."""
        return dict(scheduler=self.sched.state_dict(), nonfinite_in_a_row=self.updater.nonfinite_in_a_row,
                    config=self.cfg.to_dict())

    # ----------------------------------------------------------------------------------------------
    def fit(self) -> None:
        cfg = self.cfg
        self.log(f"lead_fast: {self.world} rank(s) on {self.device}, model {self.model_dir}, {len(self.train)} "
                 f"training / {len(self.eval)} eval prompts, steps {self.start_step}..{cfg.run.max_steps}")
        get_pool(self.grade_workers)  # start the grading workers before the first step needs them
        with StopRequest() as stop:
            for step in range(self.start_step, cfg.run.max_steps):
                if cfg.run.eval_every and step == self.start_step == 0:
                    self.metrics.log({"step": 0, **self.evaluate()})
                row = {"step": step + 1, **self.step(step)}
                last = step + 1 == cfg.run.max_steps
                if cfg.run.eval_every and ((step + 1) % cfg.run.eval_every == 0 or last):
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
            try:
                png = plot_metrics(self.metrics.path, os.path.join(cfg.run.output_dir, "metrics.png"))
                self.log(f"wrote {self.metrics.path} and {png}")
            except Exception as e:  # noqa: BLE001 - the run is finished and saved; a plot must not fail it
                self.log(f"wrote {self.metrics.path}; the plot failed ({type(e).__name__}: {e}), the run did not")

    def step(self, step: int) -> dict:
        cfg, algo = self.cfg, self.cfg.algo
        t_step = time.time()

        # 1-3. the engine gets the current weights (it may have discarded them after the last generate);
        # then this rank's prompts, n responses each, graded
        t_sync = self.sync_engine()
        idx = prompts_for_step(len(self.train), step, cfg.optim.prompts_per_step, self.rank, self.world, cfg.run.seed)
        prompts = [self.train[i][0] for i in idx]
        answers = [self.train[i][1] for i in idx]
        rollouts = self.rollout_and_grade(prompts, answers, SamplingSettings(
            n=cfg.rollout.n, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
            max_new_tokens=cfg.rollout.max_new_tokens, seed=step_seed(cfg.run.seed, step, self.rank),
            stop=tuple(cfg.rollout.stop)))

        # 4. rewards: outcome, explicit penalties, length-regularized among correct responses
        responses, lengths = rollouts.responses, rollouts.lengths     # (R,) token lists, (R,) float64
        rewards = lead_rewards(rollouts.outcomes, lengths, rollouts.group_ids, alpha=algo.alpha,
                               correct_reward=algo.correct_reward, incorrect_reward=algo.incorrect_reward,
                               format_error_reward=algo.format_error_reward,
                               degenerate_reward=algo.degenerate_reward, min_short_len=algo.min_short_len)

        # 5. advantages, group-normalized; the difficulty weight w(rho) is applied in the loss head
        advantages, correct_ratio = lead_advantages(rewards, rollouts.group_ids, reweight=False)
        all_equal, no_correct = group_drop_reasons(rewards, rollouts.group_ids)
        no_correct &= ~all_equal & algo.drop_no_correct        # counted once, under the first reason
        keep = ~(all_equal | no_correct) if algo.drop_no_signal else torch.ones_like(all_equal)
        engine_lp = [None if c.logprobs is None else torch.tensor(c.logprobs) for c in rollouts.completions]
        samples = [Sample(prompts[g], responses[i], float(advantages[i]), float(correct_ratio[i]),
                          rollout_logprobs=engine_lp[i])
                   for i, g in enumerate(rollouts.group_ids.tolist()) if keep[i]]

        # 6-7. update (old / reference passes, micro-batches, clip, optimizer step)
        t0 = time.time()
        update = self.updater.update(samples, step, sampled=cfg.optim.prompts_per_step * cfg.rollout.n)
        t_update = time.time() - t0

        # 8. metrics, summed over ranks by name
        outcomes = torch.tensor(rollouts.outcomes)
        tot = all_sum({"responses": len(responses), "correct": (outcomes == 1).sum(),
                       "no_answer": (outcomes == -1).sum(), "degenerate": (outcomes == -2).sum(),
                       "reward": rewards.sum(), "tokens": lengths.sum(), "groups": len(prompts),
                       "groups_dropped": len(prompts) - len(set(rollouts.group_ids[keep].tolist())),
                       "dropped_all_equal": len(set(rollouts.group_ids[all_equal & ~keep].tolist())),
                       "dropped_no_correct": len(set(rollouts.group_ids[no_correct & ~keep].tolist())),
                       "grade_timeouts": rollouts.grade_timeouts,
                       "truncated": sum(c.finish_reason == "length" for c in rollouts.completions)}, self.device)
        slowest_rollout_s = all_max(rollouts.rollout_s, self.device)
        n = max(tot["responses"], 1.0)
        t_step = time.time() - t_step
        return {
            "loss": update["loss"], "reward/mean": tot["reward"] / n, "accuracy": tot["correct"] / n,
            "response_length/mean": tot["tokens"] / n, "no_answer_frac": tot["no_answer"] / n,
            "degenerate_frac": tot["degenerate"] / n, "clip_frac": update["clip_frac"], "kl": update["kl"],
            "entropy": update["entropy"], "grad_norm": update["grad_norm"], "lr": self.sched.get_last_lr()[0],
            "groups_dropped": int(tot["groups_dropped"]), "groups": int(tot["groups"]),
            "groups_dropped/all_equal": int(tot["dropped_all_equal"]),
            "groups_dropped/no_correct": int(tot["dropped_no_correct"]),
            "grade_timeouts": int(tot["grade_timeouts"]), "nonfinite_skipped": update["nonfinite_skipped"],
            "time/rollout_s": rollouts.rollout_s, "time/grade_s": rollouts.grade_s, "time/update_s": t_update,
            "time/sync_s": t_sync, "time/step_s": t_step, "tokens_per_s": tot["tokens"] / max(t_step, 1e-9),
            "rollout/tokens_per_s": tot["tokens"] / max(slowest_rollout_s, 1e-9),
            "rollout/truncated_frac": tot["truncated"] / n, "rollout/logprob_gap": update["logprob_gap"],
        }

    def sync_engine(self) -> float:
        """Hand the rollout engine the policy's current weights (a collective); returns seconds. Called
        before every generate: a colocated vLLM engine discards its weights after generating, and a
        skipped update or an eval in between must not leave it with stale or missing ones."""
        t0 = time.time()
        self.engine.update_weights(self.policy.hf_named_tensors())
        return time.time() - t0

    def rollout_and_grade(self, prompts: list[list[int]], answers: list[str], settings: SamplingSettings):
        """Generate ``settings.n`` responses per prompt and grade each against its prompt's answer."""
        algo = self.cfg.algo
        return rollout_and_grade(self.engine, self.tok, prompts, answers, settings, grade_kw=self._grade_kw(),
                                 timeout_s=algo.grade_timeout_s, num_workers=self.grade_workers,
                                 progress=self.rank == 0)

    def _grade_kw(self) -> dict:
        algo = self.cfg.algo
        return dict(require_think=algo.require_think, answer_from=algo.answer_from,
                    unboxed_is_wrong=algo.unboxed_is_wrong)

    def evaluate(self) -> dict:
        """pass@1, cons@n and mean response length on this rank's share of the eval problems, summed over
        ranks (``lead_fast.eval``'s scoring). The sampling seed is the same at every eval, so changes come
        from the weights alone. ``eval/accuracy`` is pass@1."""
        cfg, algo = self.cfg, self.cfg.algo
        t0 = time.time()
        self.sync_engine()
        mine = self.eval[self.rank::self.world]
        results, _ = generate_and_score(
            self.engine, self.tok, [p for p, _ in mine], [a for _, a in mine], SamplingSettings(
                n=cfg.rollout.eval_n, temperature=cfg.rollout.eval_temperature, top_p=1.0,
                max_new_tokens=cfg.rollout.max_new_tokens, seed=step_seed(cfg.run.seed, 0, self.rank, salt=3),
                stop=tuple(cfg.rollout.stop)),
            grade_kw=self._grade_kw(), timeout_s=algo.grade_timeout_s, num_workers=self.grade_workers)
        tot = all_sum({"problems": len(results), "pass1": sum(r.correct / r.n for r in results),
                       "cons": sum(r.vote_correct for r in results), "responses": sum(r.n for r in results),
                       "tokens": sum(sum(r.lengths) for r in results)}, self.device)
        problems = max(tot["problems"], 1.0)
        return {"eval/accuracy": tot["pass1"] / problems, "eval/pass@1": tot["pass1"] / problems,
                "eval/cons@n": tot["cons"] / problems,   # n = rollout.eval_n
                "eval/response_length": tot["tokens"] / max(tot["responses"], 1.0), "time/eval_s": time.time() - t0}

    def close(self) -> None:
        self.engine.close()
        self.metrics.close()
