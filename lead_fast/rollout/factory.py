"""The engine factory: the engine a run asks for, built from what the trainer and the eval command know.

Its own module so that ``base`` (the protocol and its value types) imports no engine and no engine imports
the factory: ``base`` <- ``hf``, ``vllm_engine`` <- ``factory``.
"""

from __future__ import annotations

import torch

from lead_fast.config import ConfigError, vllm_import_problem
from lead_fast.rollout.base import EngineMemory, RolloutEngine, stop_token_ids
from lead_fast.rollout.hf import HFEngine
from lead_fast.rollout.vllm_engine import EngineMemoryError, VLLMEngine


def make_engine(kind: str, model_path: str, *, device: torch.device, dtype: torch.dtype, tokenizer, seed: int,
                max_model_len: int, memory: EngineMemory = EngineMemory(), colocated: bool = True,
                logprobs: bool = False, hf_batching: str = "generate", enforce_eager: str = "auto") -> RolloutEngine:
    """The engine named ``kind`` (``hf`` or ``vllm``) for ``model_path``.

    ``colocated``: the engine shares the device with a trainer (vLLM then sleeps after each ``generate``
    where the platform can, and needs ``update_weights`` before the next). ``memory``: the vLLM engine's
    memory (``EngineMemory``). ``logprobs``: completions carry the engine's log-probs (vLLM).
    ``hf_batching``: ``generate`` or ``continuous`` (transformers' paged continuous batching).
    ``enforce_eager``: vLLM without torch.compile / CUDA graphs (``auto``: on CPU only).
    The ``hf`` engine runs on ``device``; ``vllm`` uses the current CUDA device, or the CPU build's.
    """
    stops = stop_token_ids(model_path, tokenizer)
    if kind == "hf":
        return HFEngine(model_path, device=device, dtype=dtype, tokenizer=tokenizer, stop_token_ids=stops,
                        batching=hf_batching)
    if kind == "vllm":
        problem = vllm_import_problem()
        if problem:
            raise ConfigError(problem)
        try:
            return VLLMEngine(model_path, dtype=dtype, seed=seed, max_model_len=max_model_len, stop_token_ids=stops,
                              memory=memory, sleep=colocated, logprobs=logprobs, enforce_eager=enforce_eager)
        except EngineMemoryError as e:
            raise ConfigError(str(e)) from None
    raise ValueError(f"unknown rollout engine {kind!r}; choose hf or vllm")
