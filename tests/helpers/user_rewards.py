"""A TRL user's reward module, as written for TRL's GRPOTrainer (``reward_funcs=[...]``): the tests hand it to
lead_fast unchanged, by ``tests/helpers/user_rewards.py:NAME`` or ``tests.helpers.user_rewards:NAME``."""

import time

from trl.rewards import accuracy_reward  # noqa: F401  (TRL's own math reward, re-exported for the tests)


def brevity(completions, completion_ids, max_len, **kwargs):
    """A length penalty, ``-len / max_len`` (``max_len``: a column of the dataset), None for empty text. A
    penalty (never > 0), so that beside an accuracy reward only correct answers have a total reward > 0."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [None if not t.strip() else -len(ids) / m for t, ids, m in zip(texts, completion_ids, max_len)]


def echo(prompts, completions, completion_ids, trainer_state, **columns):
    """What a reward function receives, returned in a way a test can read: the reward is the row's index in
    the batch plus 1000 times the step; the arguments are appended, as JSON, to the file in $ECHO_FILE."""
    import json
    import os

    with open(os.environ["ECHO_FILE"], "a") as f:
        f.write(json.dumps(dict(prompts=prompts, completions=completions, completion_ids=completion_ids,
                                step=trainer_state.global_step, max_steps=trainer_state.max_steps,
                                columns=columns)) + "\n")
    return [i + 1000.0 * trainer_state.global_step for i in range(len(completions))]


def flaky(completions, trainer_state, **kwargs):
    """Fine at the first step; raises at the second (what a user's bug looks like mid-run)."""
    if trainer_state.global_step >= 1:
        raise ValueError("no rubric for this prompt")
    return [0.5] * len(completions)


def short_list(completions, **kwargs):
    return [1.0] * (len(completions) - 1)


def text_at_row_3(completions, **kwargs):
    return [1.0, 0.0, 1.0, "high", 0.0][: len(completions)] + [0.0] * max(0, len(completions) - 5)


def nan_and_none(completions, **kwargs):
    return [float("nan"), None] + [1.0] * (len(completions) - 2)


def hangs(completions, **kwargs):
    time.sleep(3600)


def dies(completions, **kwargs):
    import os

    os._exit(3)


NOT_A_FUNCTION = 3
