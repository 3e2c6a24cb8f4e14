"""Rollouts with vLLM, colocated with the trainer under torchrun.

UNVERIFIED: vLLM cannot be installed on the machines this project is developed and tested on. This
file is written against vLLM's documented API (``LLM(..., distributed_executor_backend=
"external_launcher", enable_sleep_mode=True)``, ``sleep`` / ``wake_up(tags=...)``, the in-process model's
``load_weights``) and kept thin behind the ``RolloutEngine`` protocol, whose HF implementation is the
one that runs and is tested here. Check it against the installed vLLM version before relying on it.
"""

from __future__ import annotations

import os
from typing import Iterable

import torch

from lead_fast.rollout.base import SamplingSettings


class VLLMEngine:
    def __init__(self, model_path: str, *, dtype: torch.dtype, tokenizer, gpu_memory_utilization: float = 0.5,
                 max_model_len: int | None = None, seed: int = 0):
        # In-process engine core, so the model object is reachable for load_weights.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        self.llm = LLM(model=model_path, dtype=str(dtype).replace("torch.", ""), seed=seed,
                       distributed_executor_backend="external_launcher", enable_sleep_mode=True,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       enable_prefix_caching=True)
        self.eos_id = tokenizer.eos_token_id
        self._asleep = False

    def generate(self, prompts: list[list[int]], settings: SamplingSettings) -> list[list[list[int]]]:
        from vllm import SamplingParams

        sp = SamplingParams(n=settings.n, temperature=settings.temperature, top_p=settings.top_p,
                            max_tokens=settings.max_new_tokens, seed=settings.seed)
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sp, use_tqdm=False)
        result = []
        for o in outs:
            group = []
            for c in o.outputs:
                ids = list(c.token_ids)
                if c.finish_reason == "stop" and (not ids or ids[-1] != self.eos_id):
                    ids.append(self.eos_id)
                group.append(ids)
            result.append(group)
        return result

    def _model(self):
        return self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.wake_up(tags=["weights"])
        self._model().load_weights(weights=list(weights))

    def finish_sync(self) -> None:
        """After the last bucket: KV cache back, and no stale prefix-cache entries from the old weights."""
        self.wake_up(tags=["kv_cache"])
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        if not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def wake_up(self, tags=None) -> None:
        if self._asleep:
            self.llm.wake_up(tags=tags)
            if tags is None or "kv_cache" in tags:
                self._asleep = False
