"""Named presets: plain functions returning a ``TrainConfig``. ``--preset NAME`` starts from one; docs/training.md's
table of what each changes is ``preset_table()``'s output."""

from __future__ import annotations

import dataclasses

from lead_fast.config import SECTIONS, TrainConfig
from lead_fast.data import SHIPPED_DATA


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
    c.algo.rollout_correction = "none"       # the official code has no rollout correction
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


def grpo() -> TrainConfig:
    """Plain GRPO as TRL 1.16's GRPOTrainer runs it by default (needs --model): its loss (dapo: a token mean over
    the batch), rewards scaled by the group's std + 1e-4, beta 0, clip 0.2, temperature 1, 8 responses of up to
    512 tokens, lr 1e-6; math-verify's reward 1 / 0 like TRL's accuracy_reward; none of GRPO-LEAD's parts (no
    length regularization, no difficulty weight, no group filter). README lists what still differs."""
    c = TrainConfig(preset="grpo")
    c.rollout.n = 8
    c.rollout.temperature = 1.0
    c.rollout.max_new_tokens = 512
    c.algo.incorrect_reward = 0.0
    c.algo.degenerate_reward = 0.0
    c.algo.alpha = 0.0
    c.algo.reweight = False
    c.algo.drop_no_signal = False
    c.algo.drop_no_correct = False
    c.algo.advantage_eps = 1e-4
    c.algo.loss_agg = "token_mean"
    c.algo.kl_coef = 0.0
    c.algo.clip_low = c.algo.clip_high = 0.2
    c.optim.lr = 1e-6
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0
    c.run.output_dir = "runs/grpo"
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


PRESETS = {"tiny": tiny, "smollm2": smollm2, "grpo_lead_14b": grpo_lead_14b, "grpo": grpo, "defaults": defaults}


def preset_changes(name: str) -> dict[str, object]:
    """``{section.field: value}`` for each field preset ``name`` sets away from the dataclass defaults."""
    base, cfg = TrainConfig(), PRESETS[name]()
    return {f"{s}.{f.name}": getattr(getattr(cfg, s), f.name) for s in SECTIONS
            for f in dataclasses.fields(getattr(cfg, s))
            if getattr(getattr(cfg, s), f.name) != getattr(getattr(base, s), f.name)}


def preset_table() -> str:
    """The markdown table of what each preset changes (docs/training.md's; a test keeps the two equal)."""
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
