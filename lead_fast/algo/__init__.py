"""GRPO-LEAD math: grading, length-regularized rewards, difficulty-weighted advantages.

Pure functions: tensors (or strings) in, tensors out; no model, no distributed state.
"""

from lead_fast.algo.grading import CORRECT, DEGENERATE, NO_ANSWER, WRONG, grade, grade_batch, is_degenerate_text
from lead_fast.algo.rewards import difficulty_weight, groups_without_signal, lead_advantages, lead_rewards

__all__ = [
    "CORRECT", "WRONG", "NO_ANSWER", "DEGENERATE",
    "grade", "grade_batch", "is_degenerate_text",
    "lead_rewards", "lead_advantages", "difficulty_weight", "groups_without_signal",
]
