"""What the chunk loop hands a row op: the loss's scalar hyper-parameters and the per-token inputs."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import torch

from lead_fast.choices import Correction, Rejection


def triton_interpret() -> bool:
    """True when Triton kernels run under the interpreter (``TRITON_INTERPRET=1``, set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True, kw_only=True)
class LossParams:
    """Scalar hyper-parameters of the loss (see ``grpo_loss``), built once per run and passed whole from the
    updater through the model wrapper into the head. Keyword-only: a reordered field cannot swap knobs."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    temperature: float = 1.0
    w_min: float = 0.4
    w_max: float = 1.5
    midpoint: float = 0.75
    steepness: float = 10.0
    correction: Correction = "none"
    """Rollout-trainer mismatch correction of the policy-gradient term (docs/design.md, "Rollout correction")."""
    correction_cap: float = 2.0
    """The importance weight's upper bound: truncated to it, or masked above it."""
    correction_low: float | None = None
    """The importance weight's lower bound, applied only when set (as TRL does): truncated to it, or masked
    below it."""
    rejection: Rejection = "none"
    """Reject (weight 0) tokens or responses whose ratio leaves ``[rejection_low, rejection_high]``; the
    rejection multiplies the correction's weight (docs/design.md)."""
    rejection_low: float = 0.5
    rejection_high: float = 2.0

    @property
    def token_correction(self) -> bool:
        return self.correction in ("token_truncate", "token_mask")

    @property
    def sequence_correction(self) -> bool:
        return self.correction in ("sequence_truncate", "sequence_mask")

    @property
    def corrected(self) -> bool:
        """Any weight on the policy-gradient term from the engine's log-probs (a correction or a rejection)."""
        return self.correction != "none" or self.rejection != "none"

    @property
    def weights_before_loss(self) -> bool:
        """The weights are computed per response before the loss (sequence modes, any rejection) and handed
        to the row op; a token correction alone is computed inside it."""
        return self.sequence_correction or self.rejection != "none"


@dataclass(frozen=True, kw_only=True)
class TokenInputs:
    """Per-token inputs of the loss, each ``(N,)`` (float32, or int64 ``targets``); None where absent.

    ``advantages`` and ``token_weights`` are None for a forward-only (log-prob) pass. ``rollout_logprobs``
    (the engine's log-prob of each sampled token) and ``seq_ids`` (which response each token belongs to, for
    the sequence-level corrections) feed the rollout correction; ``is_weights`` are sequence-level weights
    the head computes itself from them before the loss.
    """

    targets: torch.Tensor
    advantages: torch.Tensor | None = None
    token_weights: torch.Tensor | None = None
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    correct_ratio: torch.Tensor | None = None
    rollout_logprobs: torch.Tensor | None = None
    seq_ids: torch.Tensor | None = None
    is_weights: torch.Tensor | None = None

    def slice(self, start: int, end: int) -> "TokenInputs":
        """Rows ``start:end`` of every input (views, no copies)."""
        return TokenInputs(**{f.name: None if (t := getattr(self, f.name)) is None else t[start:end]
                              for f in fields(self)})
