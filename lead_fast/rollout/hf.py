"""Rollouts with transformers on the engine's own unsharded copy of the model.

Two ways to batch: ``generate`` (padded rows; the default, and the only one tested for exact resume) or
``continuous`` (``generate_batch``: paged attention, finished rows replaced by waiting ones; transformers
>= 5). Both stop on the same token ids as the vLLM engine (``stop_token_ids``) and cut at the same stop
strings; continuous batching matches stop strings after the fact (it has no ``stop_strings``), so a
response still ends right after the token that completed one.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import torch

from lead_fast.choices import HFBatching, options
from lead_fast.rollout.base import Completion, SamplingSettings


def _paged_cache_for(prompts: list[list[int]], settings: SamplingSettings) -> dict:
    """generate_batch's paged cache sized to this batch. Left to itself it sizes the cache and its attention
    mask from the free memory (gigabytes on a CPU host: one 6-response batch of the tiny model spent 11 s
    filling the mask); a batch needs at most one page per 256 tokens of each response, plus one."""
    try:
        from transformers import ContinuousBatchingConfig
    except ImportError:           # a transformers without it sizes the cache itself
        return {}
    page = 256
    pages = sum(-(-(len(p) + settings.max_new_tokens) // page) for p in prompts) * settings.n
    tokens = sum(len(p) + settings.max_new_tokens for p in prompts) * settings.n
    return dict(continuous_batching_config=ContinuousBatchingConfig(
        page_size=page, num_blocks=pages + 1, max_batch_tokens=min(tokens, 8192)))


class HFEngine:
    """Generates with ``model.generate``; receives new weights only through ``update_weights``."""

    def __init__(self, model_path: str, *, device: torch.device, dtype: torch.dtype, tokenizer,
                 stop_token_ids: tuple[int, ...] | None = None, batching: str = "generate", logprobs: bool = False):
        """``logprobs``: each completion carries its tokens' log-probs under the distribution sampled from
        (``generate``'s processed scores: after temperature, top-p and min-p), padded batching only."""
        from transformers import AutoModelForCausalLM

        if batching not in options(HFBatching):
            raise ValueError(f"batching must be one of {', '.join(options(HFBatching))}, got {batching!r}")
        if logprobs and batching != "generate":
            raise ValueError("log-probs come from generate's processed scores: padded batching only")
        self.logprobs = logprobs

        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
        self.model.requires_grad_(False)
        self.device = device
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.stop_ids = list(stop_token_ids or (tokenizer.eos_token_id,))
        self.batching = batching
        self._params = dict(self.model.named_parameters())
        self._params.update(dict(self.model.named_buffers()))

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], settings: SamplingSettings) -> list[list[Completion]]:
        if not prompts:
            return []
        if settings.temperature == 0 and settings.n > 1:   # transformers refuses greedy n > 1; all n are equal
            return [g * settings.n for g in self.generate(prompts, dataclasses.replace(settings, n=1))]
        if self.batching == "continuous":
            return self._generate_continuous(prompts, settings)
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        greedy = settings.temperature == 0
        gen = torch.Generator(device="cpu").manual_seed(settings.seed)
        # generate() samples from the global RNG; fork it so this call is reproducible from its seed alone.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            out = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                do_sample=not greedy, temperature=None if greedy else settings.temperature,
                top_p=None if greedy else settings.top_p, top_k=0 if not greedy else None,
                min_p=settings.min_p if (settings.min_p and not greedy) else None,
                max_new_tokens=settings.max_new_tokens, num_return_sequences=settings.n,
                pad_token_id=self.pad_id, eos_token_id=self.stop_ids,
                **(dict(min_new_tokens=settings.max_new_tokens) if settings.ignore_eos else {}),
                **(dict(stop_strings=list(settings.stop), tokenizer=self.tokenizer) if settings.stop else {}),
                **(dict(output_scores=True, return_dict_in_generate=True) if self.logprobs else {}))
        seqs = out.sequences if self.logprobs else out
        resp = seqs[:, width:]
        lps = [None] * len(resp)
        if self.logprobs:
            # step t's processed scores (the distribution sampled from) at the token sampled there
            lps = torch.stack([torch.log_softmax(s.float(), -1).gather(1, resp[:, t:t + 1]).squeeze(1)
                               for t, s in enumerate(out.scores)], 1).tolist()
        flat = [self._finish(r, settings, lp) for r, lp in zip(resp.tolist(), lps)]
        return [flat[i * settings.n:(i + 1) * settings.n] for i in range(len(prompts))]

    @torch.no_grad()
    def _generate_continuous(self, prompts: list[list[int]], settings: SamplingSettings) -> list[list[Completion]]:
        from transformers import GenerationConfig

        greedy = settings.temperature == 0
        config = GenerationConfig(
            do_sample=not greedy, temperature=None if greedy else settings.temperature,
            top_p=None if greedy else settings.top_p, top_k=None if greedy else 0,
            min_p=settings.min_p if (settings.min_p and not greedy) else None,
            max_new_tokens=settings.max_new_tokens, num_return_sequences=settings.n,
            # generate_batch keeps only ids >= 0: -1 stops on nothing
            eos_token_id=-1 if settings.ignore_eos else self.stop_ids, pad_token_id=self.pad_id)
        gen = torch.Generator(device="cpu").manual_seed(settings.seed)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            out = self.model.generate_batch(prompts, generation_config=config, progress_bar=False,
                                            **_paged_cache_for(prompts, settings))
        # ordered by prompt, each prompt's n responses together; generate_batch logs failures, we raise
        results = list(out.values())
        failed = [r.error for r in results if r.error is not None]
        if len(results) != len(prompts) * settings.n or failed:
            raise RuntimeError(f"continuous batching returned {len(results)} of {len(prompts) * settings.n} "
                               f"responses; errors: {failed[:3]}")
        flat = []
        for r in results:
            c = self._finish(list(r.generated_tokens), settings)
            if c.finish_reason == "length" and len(c.token_ids) < settings.max_new_tokens:
                c = Completion(c.token_ids, "abort")   # ended early without a stop: not a cut-off
            flat.append(c)
        return [flat[i * settings.n:(i + 1) * settings.n] for i in range(len(prompts))]

    def _finish(self, r: list[int], settings: SamplingSettings, logprobs: list[float] | None = None) -> Completion:
        """Cut a generated row (and its log-probs) where it ended: after its first stop token or after the
        token that completes a stop string (both kept: the policy must learn to stop); ``generate`` pads
        finished rows after that point."""
        stop = settings.stop
        stops = () if settings.ignore_eos else self.stop_ids
        end = next((k + 1 for k, t in enumerate(r) if t in stops), None)
        if stop:
            # "the prefix holds a stop string" is monotone in the prefix length: binary search it
            head = r[:end] if end else r
            has = lambda k: any(x in self.tokenizer.decode(head[:k]) for x in stop)  # noqa: E731
            if has(len(head)):
                lo, hi = 1, len(head)
                while lo < hi:
                    mid = (lo + hi) // 2
                    lo, hi = (lo, mid) if has(mid) else (mid + 1, hi)
                end = lo
        if end:
            return Completion(r[:end], "stop", None if logprobs is None else logprobs[:end])
        return Completion(r, "length", logprobs)

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy each tensor into the engine's model as it arrives (no buckets: no extra memory here)."""
        for name, t in named_tensors:
            p = self._params.get(name)
            if p is None:
                raise KeyError(f"rollout engine has no parameter {name!r}")
            if p.shape != t.shape:
                raise ValueError(f"{name}: engine shape {tuple(p.shape)} != trainer shape {tuple(t.shape)}")
            p.copy_(t)

    def share_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Generate with these tensors themselves, not a copy: the engine's own weights are dropped, every
        later in-place change to the given tensors (an optimizer step) is the engine's at once (the trainer
        then skips its syncs). For a trainer whose full weights live on its own rank, in the engine's dtype
        and device."""
        for name, t in named_tensors:
            p = self._params.get(name)
            if p is None:
                raise KeyError(f"rollout engine has no parameter {name!r}")
            if (p.shape, p.dtype, p.device) != (t.shape, t.dtype, t.device):
                raise ValueError(f"{name}: engine {tuple(p.shape)} {p.dtype} on {p.device} cannot share the trainer's "
                                 f"{tuple(t.shape)} {t.dtype} on {t.device}")
            p.data = t          # a tied output head is this same parameter object, so it follows

    def close(self) -> None:
        self.model = None
        self._params = {}
