"""The fused GRPO-LEAD loss head: chunked over tokens, never the full ``(N, V)`` logits."""

from lead_fast.ops.head import GRPOLossOutput, LossParams, grpo_loss, resolve_backend, token_logprobs

__all__ = ["grpo_loss", "token_logprobs", "GRPOLossOutput", "LossParams", "resolve_backend"]
