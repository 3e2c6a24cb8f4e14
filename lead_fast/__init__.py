"""lead_fast: GRPO-LEAD training with a fused Triton loss head."""

__version__ = "0.1.0"
