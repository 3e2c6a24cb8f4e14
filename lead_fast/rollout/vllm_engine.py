"""Rollouts with vLLM, colocated with the trainer under torchrun.

UNVERIFIED: vLLM cannot be installed on the machines this project is developed and tested on. This
file is written against vLLM's documented API (``LLM(..., distributed_executor_backend=
"external_launcher", enable_sleep_mode=True)``, ``sleep`` / ``wake_up(tags=...)``, the in-process model's
``load_weights``) and kept thin behind the ``RolloutEngine`` protocol, whose transformers implementation
is the one that runs and is tested here. Check it against the installed vLLM version before relying on it.

Memory is managed inside the protocol's calls: after ``generate`` the engine sleeps (level 1: weights
offloaded, KV cache freed) so the trainer has the GPU; ``update_weights`` wakes the weights only and loads
the new ones in buckets; the next ``generate`` wakes the KV cache and drops prefix-cache entries computed
with the old weights.
"""

from __future__ import annotations

import os
from typing import Iterable

import torch

from lead_fast.rollout.base import Completion, SamplingSettings


class VLLMEngine:
    def __init__(self, model_path: str, *, dtype: torch.dtype, tokenizer, seed: int, max_model_len: int,
                 gpu_memory_utilization: float, bucket_bytes: int):
        # In-process engine core, so the model object is reachable for load_weights.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        self.dtype = dtype
        self.bucket_bytes = bucket_bytes
        self.llm = LLM(model=model_path, dtype=str(dtype).replace("torch.", ""), seed=seed,
                       distributed_executor_backend="external_launcher", enable_sleep_mode=True,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       enable_prefix_caching=True)
        self._asleep: set[str] = set()      # tags that are asleep: "weights", "kv_cache"
        self._prefix_stale = False

    def _wake(self, tags: list[str]) -> None:
        tags = [t for t in tags if t in self._asleep]
        if tags:
            torch.cuda.empty_cache()  # hand the trainer's cached blocks back before vLLM allocates
            self.llm.wake_up(tags=tags)
            self._asleep.difference_update(tags)

    def generate(self, prompts: list[list[int]], settings: SamplingSettings) -> list[list[Completion]]:
        from vllm import SamplingParams

        self._wake(["weights", "kv_cache"])
        if self._prefix_stale:
            self.llm.reset_prefix_cache()
            self._prefix_stale = False
        sp = SamplingParams(n=settings.n, temperature=settings.temperature, top_p=settings.top_p, min_p=settings.min_p,
                            max_tokens=settings.max_new_tokens, seed=settings.seed,
                            stop=list(settings.stop) or None, include_stop_str_in_output=True)
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        result = [[Completion(list(c.token_ids), "length" if c.finish_reason == "length" else "stop")
                   for c in o.outputs] for o in outs]
        self.llm.sleep(level=1)
        self._asleep = {"weights", "kv_cache"}
        return result

    def _model(self):
        return self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        self._wake(["weights"])
        model = self._model()
        bucket, size = [], 0
        for name, t in named_tensors:   # drained to the end: under FSDP each item is a collective
            t = t.to(self.dtype)
            bucket.append((name, t))
            size += t.numel() * t.element_size()
            if size >= self.bucket_bytes:
                model.load_weights(weights=bucket)
                bucket, size = [], 0
        if bucket:
            model.load_weights(weights=bucket)
        self._prefix_stale = True

    def close(self) -> None:
        del self.llm
        torch.cuda.empty_cache()
