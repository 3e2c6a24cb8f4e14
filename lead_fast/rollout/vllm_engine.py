"""Rollouts with vLLM, one in-process engine per rank, colocated with the trainer under torchrun.

Written against vLLM 0.33.0's source (``vllm/entrypoints/llm.py``, ``sampling_params.py``,
``v1/engine/parallel_sampling.py``, ``v1/executor/abstract.py``, ``v1/worker/gpu_worker.py``) and tested
against a stand-in that transcribes that API (``tests/standin/vllm``), **not against vLLM itself**: vLLM
cannot be installed where this project is developed. Only the public ``LLM`` methods are used:
``generate``, ``sleep``, ``wake_up``, ``reset_prefix_cache``, ``apply_model``.

Memory, colocated (``sleep=True``): after ``generate`` the engine sleeps at level 2 — weights and KV cache
discarded, nothing copied to the host — and its weights are marked invalid, so ``generate`` refuses to
run until a complete ``update_weights``. A sync is ``empty_cache`` (hand the trainer's cached blocks
back first) -> ``wake_up(["weights"])`` once -> every parameter streamed, cast to the engine's dtype,
through the worker model's ``load_weights`` in one call (a layer fused from several Hugging Face tensors,
``qkv_proj`` / ``gate_up_proj``, is never split over calls) -> every engine parameter checked loaded ->
``wake_up(["kv_cache"])`` -> ``reset_prefix_cache()`` (cached prefixes were computed with old weights).
"""

from __future__ import annotations

import contextlib
import os
import random
import warnings
from typing import Iterable

import torch

from lead_fast.rollout.base import Completion, SamplingSettings

WRITTEN_FOR = "0.33.0"
SUPPORTED = ((0, 33), (0, 34))     # [low, high) by (major, minor)


class WeightsDiscardedError(RuntimeError):
    """``generate`` was called while the engine's weights are discarded (after a level-2 sleep)."""


def check_version(version: str) -> str | None:
    """A warning naming both versions when ``version`` is outside the range this engine was written for."""
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return f"vLLM version {version!r} is not a release number; lead_fast's engine was written for {WRITTEN_FOR}"
    if not SUPPORTED[0] <= (major, minor) < SUPPORTED[1]:
        return (f"vLLM {version} is installed; lead_fast's vLLM engine was written for vLLM {WRITTEN_FOR} "
                f"(0.33.x) and may not work with it. Install vllm==0.33.* or use --rollout.engine hf")
    return None


@contextlib.contextmanager
def _process_state_kept():
    """vLLM seeds Python's, NumPy's and torch's global RNGs and sets torch to one thread when it builds
    an engine; the trainer's own state (and CPU speed) must not change."""
    py = random.getstate()
    np_state = None
    try:
        import numpy as np

        np_state = np.random.get_state()
    except ImportError:
        pass
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            random.setstate(py)
            if np_state is not None:
                import numpy as np

                np.random.set_state(np_state)
            torch.set_num_threads(threads)


class VLLMEngine:
    def __init__(self, model_path: str, *, dtype: torch.dtype, seed: int, max_model_len: int,
                 gpu_memory_utilization: float, stop_token_ids: tuple[int, ...], sleep: bool = True,
                 logprobs: bool = False, tensor_parallel_size: int = 1):
        if tensor_parallel_size != 1:
            raise ValueError("the vLLM engine runs one engine per rank with tensor_parallel_size=1; "
                             f"got {tensor_parallel_size}")
        import vllm
        from vllm import LLM

        msg = check_version(getattr(vllm, "__version__", "unknown"))
        if msg:
            warnings.warn(msg, stacklevel=2)
        import torch.distributed as dist

        under_launcher = dist.is_available() and dist.is_initialized()
        if under_launcher:
            # ExecutorWithExternalLauncher joins torchrun's world; it reads these and needs the engine core
            # in this process (which also makes the worker's model reachable through apply_model).
            os.environ.setdefault("RANK", str(dist.get_rank()))
            os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        self.dtype, self.sleeps, self.logprobs = dtype, sleep, logprobs
        self.stop_token_ids = list(stop_token_ids)
        with _process_state_kept():
            self.llm = LLM(model=model_path, dtype=str(dtype).replace("torch.", ""), seed=seed,
                           distributed_executor_backend="external_launcher" if under_launcher else "uni",
                           enable_sleep_mode=sleep, gpu_memory_utilization=gpu_memory_utilization,
                           max_model_len=max_model_len, enable_prefix_caching=True,
                           **({"logprobs_mode": "processed_logprobs"} if logprobs else {}))
        self.weights_valid = True      # loaded from model_path
        self.asleep = False

    # ---------------------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], settings: SamplingSettings) -> list[list[Completion]]:
        from vllm import SamplingParams

        if not self.weights_valid:
            raise WeightsDiscardedError(
                "the vLLM engine's weights were discarded when it went to sleep after the last generate; "
                "call update_weights with every parameter before generating again")
        if not prompts:
            return []
        greedy = settings.temperature == 0
        # vLLM gives prompt p's i-th child seed + i; prompts' seeds are spaced by n so that no two
        # responses share a random stream. Greedy sampling refuses n > 1: repeat the prompts instead.
        per_request = 1 if greedy else settings.n
        reps = settings.n if greedy else 1
        requests = [p for p in prompts for _ in range(reps)]
        params = [SamplingParams(
            n=per_request, temperature=settings.temperature, top_p=1.0 if greedy else settings.top_p,
            min_p=0.0 if greedy else settings.min_p, max_tokens=settings.max_new_tokens,
            seed=(settings.seed + k * per_request) % 2**63, ignore_eos=settings.ignore_eos,
            stop_token_ids=[] if settings.ignore_eos else self.stop_token_ids,
            stop=list(settings.stop) or None, include_stop_str_in_output=True,
            detokenize=bool(settings.stop),   # vLLM matches stop strings on text; otherwise ids suffice
            logprobs=0 if self.logprobs else None)
            for k in range(len(requests))]
        with _process_state_kept():
            outs = self.llm.generate([{"prompt_token_ids": p} for p in requests], params, use_tqdm=False)
            if self.sleeps:
                self.llm.sleep(level=2)
                self.weights_valid, self.asleep = False, True
        flat = [self._completion(c) for o in outs for c in o.outputs]
        return [flat[i * settings.n:(i + 1) * settings.n] for i in range(len(prompts))]

    @staticmethod
    def _completion(c) -> Completion:
        lps = None
        if c.logprobs is not None:
            lps = [pos[t].logprob for t, pos in zip(c.token_ids, c.logprobs)]
        reason = c.finish_reason if c.finish_reason in ("stop", "length", "abort") else "abort"
        return Completion(list(c.token_ids), reason, lps)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """One sync: every parameter, streamed through the worker model's ``load_weights`` in one call."""
        items = iter(named_tensors)
        with _process_state_kept():
            if self.asleep:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()   # the trainer's cached blocks go back before vLLM maps weights
                self.llm.wake_up(tags=["weights"])
            cast = ((name, t.to(self.dtype)) for name, t in items)

            def load(model):
                loaded = model.load_weights(cast)
                return loaded, {name for name, _ in model.named_parameters()}

            try:
                loaded, expected = self.llm.apply_model(load)[0]
            finally:
                leftover = sum(1 for _ in items)   # drained to the end: under FSDP each item is a collective
            if self.asleep:
                self.llm.wake_up(tags=["kv_cache"])
                self.asleep = False
            self.llm.reset_prefix_cache()
        missing = expected - set(loaded)
        if missing or leftover:
            self.weights_valid = False
            raise RuntimeError(f"weight sync incomplete: {len(missing)} engine parameters not loaded "
                               f"(e.g. {sorted(missing)[:3]}), {leftover} tensors not consumed")
        self.weights_valid = True

    def close(self) -> None:
        self.llm = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
