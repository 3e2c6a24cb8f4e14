"""Rollout-then-grade, written once for training and evaluation: sample, decode, then score with the run's
reward functions (training) or grade with math-verify (evaluation)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lead_fast.algo import GradingRules, grade_batch
from lead_fast.algo.reward_funcs import RewardFunctions, outcome_values
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
    scores: torch.Tensor | None = None
    """(R, F) float64: each reward function's value (NaN: it gave None); training only."""
    rewards: torch.Tensor | None = None
    """(R,) float64: the reward functions' weighted sum (NaN: unscorable), before length regularization;
    training only (an evaluation has outcomes alone)."""

    @property
    def responses(self) -> list[list[int]]:
        return [c.token_ids for c in self.completions]

    def base_rewards(self, outcome_rewards: tuple[float, float, float, float]) -> torch.Tensor:
        """(R,) float64, before length regularization: ``rewards``; for a batch a checkpoint stored before
        reward functions existed, the math reward's ``outcome_rewards`` (correct, wrong, unanswered,
        degenerate) of its outcomes."""
        if self.rewards is not None:
            return self.rewards
        return torch.tensor(outcome_values(self.outcomes, outcome_rewards), dtype=torch.float64)

    @property
    def lengths(self) -> torch.Tensor:
        """(R,) float64, tokens."""
        return torch.tensor([len(c.token_ids) for c in self.completions], dtype=torch.float64)


def _generate(engine, tokenizer, prompts: list[list[int]], settings: SamplingSettings):
    """``(completions, texts, group ids, seconds)``."""
    t0 = time.time()
    groups = engine.generate(prompts, settings) if prompts else []
    completions = [c for g in groups for c in g]
    group_ids = [i for i, g in enumerate(groups) for _ in g]
    # no completions (a rank with no problems left): transformers < 5.20 decodes [] as one empty text
    texts = tokenizer.batch_decode([c.token_ids for c in completions], skip_special_tokens=True) if completions else []
    return completions, texts, group_ids, time.time() - t0


def rollout_and_grade(engine, tokenizer, prompts: list[list[int]], answers: list[str], settings: SamplingSettings,
                      rules: GradingRules, *, num_workers: int | None = None, progress: bool = False) -> GradedRollouts:
    """``settings.n`` responses per prompt from ``engine``, each graded against its prompt's answer."""
    completions, texts, group_ids, rollout_s = _generate(engine, tokenizer, prompts, settings)
    t0 = time.time()
    outcomes, timeouts = grade_batch(texts, [answers[i] for i in group_ids], rules=rules, num_workers=num_workers,
                                     return_timeouts=True, progress=progress)
    return GradedRollouts(completions, texts, torch.tensor(group_ids, dtype=torch.long), outcomes, timeouts,
                          rollout_s, time.time() - t0)


def rollout_and_score(engine, tokenizer, prompts: list, settings: SamplingSettings, rewards: RewardFunctions, *,
                      step: int, max_steps: int, progress: bool = False) -> GradedRollouts:
    """``settings.n`` responses per prompt (``data.Prompt``s) from ``engine``, each scored by the run's reward
    functions (``step`` counts from 0; a failing function raises ``RewardFunctionError``)."""
    completions, texts, group_ids, rollout_s = _generate(engine, tokenizer, [p.ids for p in prompts], settings)
    t0 = time.time()
    of = [prompts[i] for i in group_ids]
    scores = rewards.score([p.shown for p in of], texts, [c.token_ids for c in completions],
                           [p.problem.columns for p in of], [p.answer for p in of], step=step, max_steps=max_steps,
                           progress=progress)
    return GradedRollouts(completions, texts, torch.tensor(group_ids, dtype=torch.long), scores.outcomes,
                          scores.grade_timeouts, rollout_s, time.time() - t0, scores.per_func, scores.total)
