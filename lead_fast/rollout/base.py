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


@dataclass(frozen=True)
class EngineMemory:
    """How much memory one rank's engine takes."""

    gpu_memory_utilization: float = 0.0
    """Fraction of the device's memory for the engine (weights, activations, KV cache), as vLLM reads it:
    of GPU memory on CUDA; of host RAM on CPU, with this whole process (the trainer too) counted against
    it. 0: automatic (``default_fraction`` on CUDA; the KV cache sized for ``batch_tokens`` on CPU)."""
    kv_cache_gib: float = 0.0
    """> 0: the KV cache's size in GiB on any device (vLLM's ``kv_cache_memory_bytes``; the fraction is
    then unused)."""
    batch_tokens: int = 0
    """Tokens of KV cache one rollout batch of this rank needs at most (sequences x (prompt + response
    budget)); sizes the cache on CPU by default and is named in the error when a setting leaves too little."""
    default_fraction: float = 0.5
    """The fraction used on CUDA when ``gpu_memory_utilization`` is 0 (0.5 colocated with a trainer; the
    eval command, alone on the GPU, 0.9)."""
    flags: tuple[str, str] = ("--rollout.gpu_memory_utilization", "--rollout.kv_cache_gib")
    """The command's names for the fraction and the KV cache size, for error messages."""


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
