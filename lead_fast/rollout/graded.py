"""Rollout-then-grade, written once for training and evaluation: sample, decode, grade."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lead_fast.algo import GradingRules, grade_batch
from lead_fast.rollout.base import Completion, SamplingSettings


@dataclass
class GradedRollouts:
    """Responses to a list of prompts, graded; response ``i`` answers prompt ``group_ids[i]``."""

    completions: list[Completion]
    texts: list[str]               # decoded, special tokens dropped
    group_ids: torch.Tensor        # (R,)
    outcomes: list[int]            # (R,) CORRECT / WRONG / NO_ANSWER / DEGENERATE (lead_fast.algo)
    grade_timeouts: int
    rollout_s: float
    grade_s: float

    @property
    def responses(self) -> list[list[int]]:
        return [c.token_ids for c in self.completions]

    @property
    def lengths(self) -> torch.Tensor:
        """(R,) float64, tokens."""
        return torch.tensor([len(c.token_ids) for c in self.completions], dtype=torch.float64)


def rollout_and_grade(engine, tokenizer, prompts: list[list[int]], answers: list[str], settings: SamplingSettings,
                      rules: GradingRules, *, num_workers: int | None = None, progress: bool = False) -> GradedRollouts:
    """``settings.n`` responses per prompt from ``engine``, each graded against its prompt's answer."""
    t0 = time.time()
    groups = engine.generate(prompts, settings) if prompts else []
    rollout_s = time.time() - t0
    completions = [c for g in groups for c in g]
    group_ids = [i for i, g in enumerate(groups) for _ in g]
    t0 = time.time()
    # no completions (a rank with no problems left): transformers < 5.20 decodes [] as one empty text
    texts = tokenizer.batch_decode([c.token_ids for c in completions], skip_special_tokens=True) if completions else []
    outcomes, timeouts = grade_batch(texts, [answers[i] for i in group_ids], rules=rules, num_workers=num_workers,
                                     return_timeouts=True, progress=progress)
    return GradedRollouts(completions, texts, torch.tensor(group_ids, dtype=torch.long), outcomes, timeouts,
                          rollout_s, time.time() - t0)
