"""The engine factory: the engine a run asks for, built from what the trainer and the eval command know.

Its own module so that ``base`` (the protocol and its value types) imports no engine and no engine imports
the factory: ``base`` <- ``hf``, ``vllm_engine`` <- ``factory``.
"""

from __future__ import annotations

import functools

import torch

from lead_fast.config import RolloutConfig
from lead_fast.rollout.base import EngineMemory, RolloutEngine, stop_token_ids
from lead_fast.rollout.hf import HFEngine
from lead_fast.rollout.process import EngineProcess
from lead_fast.rollout.vllm_engine import VLLMEngine


def make_engine(rollout: RolloutConfig, model_path: str, *, device: torch.device, dtype: torch.dtype, tokenizer,
                seed: int, max_model_len: int, memory: EngineMemory = EngineMemory(),
                colocated: bool = True, own_process: bool = False) -> RolloutEngine:
    """The engine ``rollout.engine`` names for ``model_path``, with the rollout section's engine settings
    (``logprobs``, ``hf_batching``, ``enforce_eager``).

    ``colocated``: the engine shares the device with a trainer (vLLM then sleeps after each ``generate``
    where the platform can, and needs ``update_weights`` before the next). ``memory``: the vLLM engine's
    memory (``EngineMemory``). The ``hf`` engine runs on ``device``; ``vllm`` uses the current CUDA device,
    or the CPU build's. Whether vLLM imports is the command line's check (``rollout.vllm_check``).
    ``own_process``: the engine runs in a child process of this one (``EngineProcess``), outside torchrun's
    process group.
    """
    stops = stop_token_ids(model_path, tokenizer)
    if rollout.engine == "hf":
        # an engine process sees only this rank's CUDA device, as its device 0
        here = torch.device("cuda", 0) if own_process and device.type == "cuda" else device
        build = functools.partial(HFEngine, model_path, device=here, dtype=dtype, tokenizer=tokenizer,
                                  stop_token_ids=stops, batching=rollout.hf_batching, logprobs=rollout.logprobs)
    else:
        build = functools.partial(VLLMEngine, model_path, dtype=dtype, seed=seed, max_model_len=max_model_len,
                                  stop_token_ids=stops, memory=memory, sleep=colocated, logprobs=rollout.logprobs,
                                  enforce_eager=rollout.enforce_eager)
    if own_process:
        return EngineProcess(build, device=device, what=f"{rollout.engine} rollout engine")
    return build()
