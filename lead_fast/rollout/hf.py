"""Rollouts with transformers ``generate`` on the engine's own unsharded copy of the model."""

from __future__ import annotations

from typing import Iterable

import torch

from lead_fast.rollout.base import Completion, SamplingSettings


class HFEngine:
    """Generates with ``model.generate``; receives new weights only through ``update_weights``."""

    def __init__(self, model_path: str, *, device: torch.device, dtype: torch.dtype, tokenizer):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
        self.model.requires_grad_(False)
        self.device = device
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        self._params = dict(self.model.named_parameters())
        self._params.update(dict(self.model.named_buffers()))

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], settings: SamplingSettings) -> list[list[Completion]]:
        if not prompts:
            return []
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
                pad_token_id=self.pad_id, eos_token_id=self.eos_id,
                **(dict(stop_strings=list(settings.stop), tokenizer=self.tokenizer) if settings.stop else {}))
        resp = out[:, width:].tolist()
        flat = [self._finish(r, settings.stop) for r in resp]
        return [flat[i * settings.n:(i + 1) * settings.n] for i in range(len(prompts))]

    def _finish(self, r: list[int], stop: tuple[str, ...]) -> Completion:
        """Cut a generated row where it ended: after EOS or after the token that completes a stop string
        (both kept: the policy must learn to stop); ``generate`` pads finished rows after that point."""
        end = r.index(self.eos_id) + 1 if self.eos_id in r else None
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
        return Completion(r[:end], "stop") if end else Completion(r, "length")

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

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def close(self) -> None:
        self.model = None
        self._params = {}
