"""The rollout protocol: what the trainer needs from an engine, and nothing more.

``generate`` samples responses, ``update_weights`` takes the trainer's new weights, ``close`` frees the
engine. An engine manages its own memory inside those calls (a vLLM engine sleeps and wakes there); the
trainer never asks.
"""

from __future__ import annotations

import json
import os
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
    ignore_eos: bool = False
    """Generate exactly ``max_new_tokens``, stop tokens or not (benchmarks: equal work for every engine)."""


@dataclass(frozen=True)
class Completion:
    """One sampled response."""

    token_ids: list[int]
    """The response's tokens; one that stopped ends with its stop token (any of ``stop_token_ids``) or the
    token that completed a stop string: both are kept, the policy learns to stop."""
    finish_reason: Literal["stop", "length", "abort"]
    """``stop``: ended on a stop token or string; ``length``: cut off at ``max_new_tokens`` (or the
    engine's model length); ``abort``: the engine gave up on it."""
    logprobs: list[float] | None = None
    """Per token, the engine's log-prob of it after temperature / top-p / min-p, when the engine was asked
    for them (the rollout-vs-trainer gap check)."""


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], settings: SamplingSettings) -> list[list[Completion]]:
        """For each prompt (token ids), ``settings.n`` completions."""

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Take every full (unsharded) tensor by Hugging Face parameter name. Must drain the iterable: under
        FSDP each item is produced by a collective. An engine may discard its weights after ``generate``
        (vLLM colocated does); the trainer therefore syncs before every ``generate``."""

    def close(self) -> None:
        """Free the engine's memory and processes."""


def stop_token_ids(model_path: str, tokenizer) -> tuple[int, ...]:
    """The tokens that end a response: the tokenizer's EOS and every EOS id in the model's
    ``generation_config.json`` (the set vLLM stops on), in that order, without repeats."""
    ids = [tokenizer.eos_token_id]
    path = os.path.join(model_path, "generation_config.json")
    if os.path.exists(path):
        with open(path) as f:
            gen = json.load(f).get("eos_token_id")
        ids += [gen] if isinstance(gen, int) else list(gen or [])
    return tuple(dict.fromkeys(i for i in ids if i is not None))


def make_engine(kind: str, model_path: str, *, device: torch.device, dtype: torch.dtype, tokenizer, seed: int,
                max_model_len: int, gpu_memory_utilization: float = 0.5, colocated: bool = True,
                logprobs: bool = False, hf_batching: str = "generate") -> RolloutEngine:
    """The engine named ``kind`` (``hf`` or ``vllm``) for ``model_path``.

    ``colocated``: the engine shares the GPU with a trainer (vLLM then sleeps after each ``generate`` and
    needs ``update_weights`` before the next). ``logprobs``: completions carry the engine's log-probs
    (vLLM). ``hf_batching``: ``generate`` or ``continuous`` (transformers' paged continuous batching).
    The ``hf`` engine runs on ``device``; ``vllm`` uses the current CUDA device.
    """
    stops = stop_token_ids(model_path, tokenizer)
    if kind == "hf":
        from lead_fast.rollout.hf import HFEngine

        return HFEngine(model_path, device=device, dtype=dtype, tokenizer=tokenizer, stop_token_ids=stops,
                        batching=hf_batching)
    if kind == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            from lead_fast.config import VLLM_MISSING, ConfigError

            raise ConfigError(VLLM_MISSING) from None
        from lead_fast.rollout.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, dtype=dtype, seed=seed, max_model_len=max_model_len,
                          gpu_memory_utilization=gpu_memory_utilization, stop_token_ids=stops, sleep=colocated,
                          logprobs=logprobs)
    raise ValueError(f"unknown rollout engine {kind!r}; choose hf or vllm")
