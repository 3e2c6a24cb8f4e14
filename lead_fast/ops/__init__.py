"""The fused GRPO-LEAD loss head: chunked over tokens, never the full ``(N, V)`` logits."""

from lead_fast.ops.common import LossParams, TokenInputs
from lead_fast.ops.head import GRPOLossOutput, fused_grpo_loss, grpo_loss, resolve_backend, token_logprobs

__all__ = ["grpo_loss", "token_logprobs", "fused_grpo_loss", "GRPOLossOutput", "LossParams", "TokenInputs",
           "resolve_backend"]
