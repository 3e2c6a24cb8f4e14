"""The rollout protocol: what the trainer needs from an engine, and nothing more.

``generate`` samples responses, ``update_weights`` takes the trainer's new weights, ``close`` frees the
engine. An engine manages its own memory inside those calls (a vLLM engine sleeps and wakes there); the
trainer never asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal, Protocol

import torch


@dataclass(frozen=True)
class SamplingSettings:
    n: int = 1
    """Responses per prompt."""
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    min_p: float = 0.0
    """Drop tokens whose probability is below min_p times the top token's (0: off)."""
    max_new_tokens: int = 256
    seed: int = 0
    """Sampling seed for this call: the same prompts, weights and seed give the same responses."""
    stop: tuple[str, ...] = ()
    """Strings that end a response; the matched text stays in it (finish reason ``stop``)."""


@dataclass(frozen=True)
class Completion:
    """One sampled response."""

    token_ids: list[int]
    """The response's tokens; one that stopped ends with its EOS or stop string (the policy learns to stop)."""
    finish_reason: Literal["stop", "length"]
    """``stop``: ended on EOS or a stop string; ``length``: cut off at ``max_new_tokens``."""


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], settings: SamplingSettings) -> list[list[Completion]]:
        """For each prompt (token ids), ``settings.n`` completions."""

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Take full (unsharded) tensors by Hugging Face parameter name. Must drain the iterable: under
        FSDP each item is produced by a collective. The engine buckets and finishes the load itself."""

    def close(self) -> None:
        """Free the engine's memory and processes."""


def make_engine(kind: str, model_path: str, *, device: torch.device, dtype: torch.dtype, tokenizer, seed: int,
                max_model_len: int, gpu_memory_utilization: float, sync_bucket_mb: int) -> RolloutEngine:
    """The engine named ``kind`` (``hf`` or ``vllm``) for ``model_path``.

    ``hf`` runs on ``device`` and loads weights tensor by tensor (it needs no model length, memory share
    or bucketing); ``vllm`` takes every argument but ``device`` (it uses the current CUDA device).
    """
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

        return VLLMEngine(model_path, dtype=dtype, tokenizer=tokenizer, seed=seed, max_model_len=max_model_len,
                          gpu_memory_utilization=gpu_memory_utilization, bucket_bytes=sync_bucket_mb * 2**20)
    raise ValueError(f"unknown rollout engine {kind!r}; choose hf or vllm")
