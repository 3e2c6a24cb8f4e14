"""GRPO-LEAD math: grading, length-regularized rewards, difficulty-weighted advantages, loss weights.

Pure functions: tensors (or strings) in, tensors out; no model, no distributed state. The one piece of
process-global state is ``grade_batch``'s worker pool (``grading_pool``). The tensor functions are
imported on first use, so a grading worker never imports torch.
"""

from lead_fast.algo.grading import (CORRECT, DEGENERATE, NO_ANSWER, WRONG, GradingRules, answers_equal, extract_answer,
                                    grade, is_degenerate_text)
from lead_fast.algo.grading_pool import grade_batch

_REWARDS = ("lead_rewards", "length_regularized", "lead_advantages", "difficulty_weight", "select_groups", "GroupFilter",
            "groups_without_signal", "group_drop_reasons", "loss_token_weights", "LOSS_AGGS")

__all__ = ["CORRECT", "WRONG", "NO_ANSWER", "DEGENERATE", "GradingRules", "grade", "grade_batch", "is_degenerate_text",
           "extract_answer", "answers_equal",
           *_REWARDS]


def __getattr__(name):
    if name in _REWARDS:
        from lead_fast.algo import rewards

        return getattr(rewards, name)
    raise AttributeError(f"module 'lead_fast.algo' has no attribute {name!r}")
