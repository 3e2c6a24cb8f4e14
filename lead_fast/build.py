"""What a run is built from, each piece from the config, once: the model directory, the prompts, the
training side (policy, reference, optimizer, scheduler, updater, checkpoints resumed, metrics) and the
rollout engine's memory. ``lead_fast.trainer`` calls these and then only runs the loop."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from lead_fast import run_dir
from lead_fast.checkpoint import Checkpointer
from lead_fast.config import TrainConfig
from lead_fast.data import tokenize_prompts
from lead_fast.distributed import on_rank0
from lead_fast.metrics import MetricsLogger
from lead_fast.model import PolicyWithHead, apply_liger_kernels, check_context, load_model, shard
from lead_fast.orders import BATCH_TYPES
from lead_fast.placement import Placement
from lead_fast.pretrained import resolve_model_path
from lead_fast.rollout import EngineMemory, RolloutEngine, make_engine
from lead_fast.update import Updater, update_settings
from lead_fast.warm_start import prepare_model_dir


def model_dir(cfg: TrainConfig, log) -> str:
    """Collective. The model to train: a directory, one built from the package index (``pretrained:NAME``),
    or the embedded tiny model; a warm start writes ``OUTPUT_DIR/base_model`` from it. Checked against the
    prompt + response budget before anything expensive."""
    source = resolve_model_path(cfg.model.path, log=log)
    path = source
    if source is None or cfg.run.warm_start_steps:
        path = prepare_model_dir(cfg.run.output_dir, steps=cfg.run.warm_start_steps, seed=cfg.run.seed, source=source,
                                 cache=cfg.run.warm_start_cache, task=cfg.data.task if cfg.data.path is None else "sums",
                                 log=log)
    check_context(path, cfg.data.max_prompt_tokens, cfg.rollout.max_new_tokens,
                  flags="--data.max_prompt_tokens or --rollout.max_new_tokens")
    return path


def prompts(cfg: TrainConfig, task, tok, log) -> tuple[list, list]:
    """The training and eval prompts, tokenized (over-long ones skipped and counted). ``run.epochs`` > 0
    sets ``run.max_steps`` from the training prompts' count, here, where that count is first known."""
    kw = dict(instruction=task.instruction, template=cfg.data.template, max_tokens=cfg.data.max_prompt_tokens,
              preset=cfg.preset, log=log)
    train = tokenize_prompts(task.train, tok, what="training", **kw)
    evals = tokenize_prompts(task.eval, tok, what="eval", **kw)
    if cfg.run.epochs > 0:
        cfg.run.max_steps = math.ceil(cfg.run.epochs * len(train) / cfg.optim.prompts_per_step)
        log(f"run.epochs {cfg.run.epochs}: {cfg.run.max_steps} steps of {cfg.optim.prompts_per_step} prompts "
            f"over {len(train)} training prompts")
    return train, evals


def engine(cfg: TrainConfig, place: Placement, path: str, tok, device: torch.device, dtype: torch.dtype,
           num_eval: int) -> RolloutEngine:
    """A rollout rank's engine for ``path``, its vLLM memory sized by ``engine_memory``. Disaggregated vLLM runs
    in a process of its own: vLLM builds its groups over the whole default group, which here is torchrun's
    world with the trainer ranks in it."""
    return make_engine(cfg.rollout, path, device=device, dtype=dtype, tokenizer=tok, seed=cfg.run.seed,
                       max_model_len=cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens,
                       memory=engine_memory(cfg, place.train_world, num_eval), colocated=not place.disaggregated,
                       own_process=place.disaggregated and cfg.rollout.engine == "vllm")


def engine_memory(cfg: TrainConfig, shares: int, num_eval: int) -> EngineMemory:
    """The vLLM engine's memory: the config's settings, and the KV cache this rank's largest batch (one
    trainer share's rollouts, or its share of the ``num_eval`` eval prompts) needs."""
    sequences = max(-(-cfg.optim.prompts_per_step // shares) * cfg.rollout.n,
                    -(-num_eval // shares) * cfg.rollout.eval_n)
    return EngineMemory(gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
                        kv_cache_gib=cfg.rollout.kv_cache_gib, batch_tokens=sequences * (cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens))


def grade_workers(cfg: TrainConfig, world: int) -> int:
    """Grading worker processes: the config's, or this node's cores over the ranks on it (not the world's)."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return cfg.algo.grade_workers or max(1, (os.cpu_count() or 1) // local_world)


@dataclass
class TrainingSide:
    """A trainer rank's pieces, resumed when the run resumes."""

    policy: PolicyWithHead
    sched: torch.optim.lr_scheduler.LambdaLR
    updater: Updater
    checkpointer: Checkpointer
    metrics: MetricsLogger
    start_step: int = 0
    resumed_batches: list = field(default_factory=list)
    """Disaggregated: rollout batches the checkpoint stored, made with older weights than its own."""


def training_side(cfg: TrainConfig, place: Placement, path: str, tok, device: torch.device, dtype: torch.dtype,
                  *, is_lead: bool, held_out: list, log: Callable[[str], None]) -> TrainingSide:
    """Collective over the trainer group. Policy in float32 master weights (on CUDA ``dtype`` compute through
    FSDP2's mixed precision), the frozen reference when KL is on, AdamW with linear warmup, the updater,
    checkpoints (resumed with ``run.resume``: weights, optimizer, scheduler, counters) and the metrics
    logger; the lead writes ``config.yaml`` and the eval problems (``held_out``, ``eval_problems.jsonl``)."""
    group = place.train_group
    lm = load_model(path, torch.float32, device, cfg.model.attn_implementation)
    kernels = apply_liger_kernels(lm, cfg.model.liger_kernels, device, log=log)
    log(f"Liger kernels: {', '.join(kernels) or 'off'}")
    # one checkpoint: fp32 weights and AdamW's two moments, plus 5% for metadata and the rest
    need = int(1.05 * 12 * sum(p.numel() for p in lm.parameters()))
    on_rank0(lambda: run_dir.check_free_space(cfg.run.output_dir, need), group)
    head = dict(backend=cfg.optim.loss_backend, chunk_size=cfg.optim.loss_chunk_size or None)
    policy = shard(PolicyWithHead(lm, **head), device, dtype, cfg.model.activation_checkpointing, group)
    ref = None
    if cfg.algo.kl_coef > 0:
        ref_lm = load_model(path, torch.float32, device, cfg.model.attn_implementation)
        apply_liger_kernels(ref_lm, cfg.model.liger_kernels, device)
        ref = shard(PolicyWithHead(ref_lm.requires_grad_(False), **head), device, dtype, group=group)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                            weight_decay=cfg.optim.weight_decay)
    warm = cfg.optim.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: min(1.0, (n + 1) / warm) if warm else 1.0)
    settings, loss = update_settings(cfg, device.type)
    updater = Updater(policy, ref, opt, sched, settings, loss, pad_id=tok.pad_token_id, device=device,
                      rank=place.train_rank, world=place.train_world, group=group, log=log)

    def state() -> dict:
        """What a checkpoint keeps besides the weights and the optimizer."""
        return dict(scheduler=sched.state_dict(), nonfinite_in_a_row=updater.nonfinite_in_a_row,
                    config=cfg.to_dict(), train_world=place.train_world)

    # The engine loaded the base model from disk; from here on it receives weights only by sync.
    checkpointer = Checkpointer(cfg.run.output_dir, save_every=cfg.run.save_every, keep_last=cfg.run.keep_last,
                                model=policy, optimizer=opt, state=state, group=group, log=log, batch_types=BATCH_TYPES)
    resumed = checkpointer.resume() if cfg.run.resume else None
    start_step, batches = 0, []
    if resumed:
        sched.load_state_dict(resumed["scheduler"])
        start_step = resumed["step"]
        updater.nonfinite_in_a_row = resumed.get("nonfinite_in_a_row", 0)
        batches = resumed["batches"] or []
        if resumed.get("train_world", place.train_world) != place.train_world:
            # each trainer rank stored its own share; with another number of shares they are not ours
            log(f"WARNING: the checkpoint's stored rollout batches are for {resumed['train_world']} trainer "
                f"ranks, this run has {place.train_world}: they are dropped, and the run is not exact")
            batches = []
    metrics = MetricsLogger(cfg.run.output_dir, enabled=is_lead, resume_from_step=start_step if resumed else None,
                            report_to=tuple(cfg.run.report_to), config=cfg.to_dict(), max_steps=cfg.run.max_steps)
    if is_lead:
        run_dir.write_config(cfg.run.output_dir, cfg.to_dict())
        run_dir.write_eval_problems(cfg.run.output_dir, held_out)
    return TrainingSide(policy, sched, updater, checkpointer, metrics, start_step, batches)
