"""The rollout protocol: what the trainer needs from an engine, and nothing more."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Protocol

import torch


@dataclass(frozen=True)
class SamplingSettings:
    n: int = 1
    """Responses per prompt."""
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0
    """Sampling seed for this call: the same prompts, weights and seed give the same responses."""


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], settings: SamplingSettings) -> list[list[list[int]]]:
        """For each prompt (token ids), ``settings.n`` responses as token ids (ending in EOS unless cut off)."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Take full (unsharded) tensors by Hugging Face parameter name; called with buckets after each update."""

    def sleep(self) -> None:
        """Free what the engine can while the trainer runs (may do nothing)."""

    def wake_up(self) -> None:
        """Undo ``sleep`` (may do nothing)."""


def make_engine(kind: str, model_path: str, *, device: torch.device, dtype: torch.dtype, tokenizer, **kw) -> RolloutEngine:
    if kind == "hf":
        from lead_fast.rollout.hf import HFEngine

        return HFEngine(model_path, device=device, dtype=dtype, tokenizer=tokenizer)
    if kind == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            from lead_fast.config import ConfigError

            raise ConfigError("rollout.engine=vllm needs vLLM (pip install 'lead_fast[gpu]' on a CUDA machine); "
                              "use --rollout.engine hf for transformers generate") from None
        from lead_fast.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, dtype=dtype, tokenizer=tokenizer, **kw)
    raise ValueError(f"unknown rollout engine {kind!r}; choose hf or vllm")
