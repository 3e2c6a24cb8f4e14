"""Every closed set of values a setting may take, written once. The config's checks and ``--help`` read
these, and so do the modules that act on them (grading, the loss head, the engines), so a choice cannot be
spelled one way in the config and another where it is used. No imports: every module may use it."""

from __future__ import annotations

from typing import Literal, get_args

Dtype = Literal["auto", "float32", "bfloat16"]
"""Compute dtype: auto is bfloat16 on CUDA, float32 on CPU."""
Switch = Literal["auto", "on", "off"]
"""A feature that is on, off, or decided by the device (auto)."""
Template = Literal["auto", "chat", "plain"]
GeneratedTask = Literal["sums", "mixed"]
"""The generated task (no data.path): sums of two numbers, or sums of 2, 3 and 4 numbers (easy, medium, hard)."""
Engine = Literal["hf", "vllm"]
HFBatching = Literal["generate", "continuous"]
RolloutMode = Literal["colocated", "disaggregated"]
"""Where rollouts run: on the training ranks between updates, or on ranks of their own (docs/design.md)."""
AnswerFrom = Literal["after_think", "before_think"]
ScaleRewards = Literal["group", "none"]
"""Advantages: the group's reward std divides them (group), or not (none, Dr. GRPO); TRL's names."""
LossAgg = Literal["token_mean", "seq_mean_token_mean"]
LossNorm = Literal["kept", "sampled"]
LossBackend = Literal["auto", "torch", "triton"]
Tracker = Literal["tensorboard", "wandb"]
Correction = Literal["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]
"""Rollout-trainer mismatch correction (importance sampling against the engine's log-probs; docs/design.md),
TRL's ``vllm_importance_sampling_mode`` names with TRL's meaning."""
Rejection = Literal["none", "token", "sequence", "geometric"]
"""Rejection of tokens or responses whose engine-vs-trainer ratio leaves bounds (weight 1 inside, 0 outside):
each token's ratio, a response's product of ratios, or its geometric mean (docs/design.md)."""
CorrectionSetting = Literal["auto", "none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]
"""``algo.rollout_correction``: a ``Correction``, or auto (token_truncate when the engine returns log-probs)."""


def options(choice) -> tuple[str, ...]:
    """The values of a ``Literal`` choice, in order."""
    return get_args(choice)
