"""Metrics: the group filter and a step's counts and row against values worked out by hand; the trackers
(TensorBoard, W&B offline); a failing plot never failing a finished run."""

import math

import pytest
import torch

from lead_fast.algo import CORRECT, DEGENERATE, NO_ANSWER, WRONG, lead_rewards, select_groups
from lead_fast.checkpoint import latest_checkpoint
from lead_fast.metrics import eval_counts, eval_metrics, step_counts, step_metrics
from lead_fast.rollout.base import Completion
from lead_fast.rollout.graded import GradedRollouts
from tests.helpers.launch import check, python
from tests.helpers.runs import rows, tiny_args, train


def _rollouts():
    # three prompts, two responses each: group 0 one right one wrong (signal), group 1 both wrong (all
    # equal), group 2 no answer and degenerate (no correct answer, rewards differ)
    outcomes = [CORRECT, WRONG, WRONG, WRONG, NO_ANSWER, DEGENERATE]
    lengths = [4, 6, 5, 5, 8, 10]
    finish = ["stop", "stop", "stop", "length", "length", "stop"]
    completions = [Completion(list(range(n)), f) for n, f in zip(lengths, finish)]
    return GradedRollouts(completions, [""] * 6, torch.tensor([0, 0, 1, 1, 2, 2]), outcomes, grade_timeouts=1,
                          rollout_s=2.0, grade_s=0.5)


def test_the_filter_keeps_signal_and_says_why_it_drops():
    r = _rollouts()
    rewards = lead_rewards(r.outcomes, r.lengths, r.group_ids)          # 1, -1 | -1, -1 | 0, -2
    groups = select_groups(rewards, r.group_ids)
    assert groups.keep.tolist() == [True, True, False, False, False, False]
    assert groups.all_equal.tolist() == [False, False, True, True, False, False]
    assert groups.no_correct.tolist() == [False, False, False, False, True, True]   # all-equal counted once
    lenient = select_groups(rewards, r.group_ids, drop_no_correct=False)
    assert lenient.keep.tolist() == [True, True, False, False, True, True] and not lenient.no_correct.any()
    assert select_groups(rewards, r.group_ids, drop_no_signal=False).keep.all()


def test_step_counts_and_metrics_are_the_hand_computed_values():
    r = _rollouts()
    rewards = lead_rewards(r.outcomes, r.lengths, r.group_ids)
    groups = select_groups(rewards, r.group_ids)
    tot = step_counts(r, rewards, groups, num_prompts=3)
    assert tot == {"responses": 6, "correct": 1, "no_answer": 1, "degenerate": 1, "reward": -4.0, "scored": 6,
                   "unscorable": 0, "tokens": 38.0, "groups": 3, "groups_dropped": 2, "dropped_all_equal": 1, "dropped_no_correct": 1,
                   "grade_timeouts": 1, "truncated": 2}
    update = dict(loss=0.25, clip_frac=0.0, kl=0.0, entropy=1.5, grad_norm=0.75, nonfinite_skipped=0,
                  logprob_gap=math.nan)
    seconds = dict(rollout=2.0, grade=0.5, update=1.0, sync=0.1, slowest_rollout=4.0, step=3.8)
    row = step_metrics(tot, update, seconds, lr=1e-5)
    assert row["reward/mean"] == -4 / 6 and row["accuracy"] == 1 / 6 and row["response_length/mean"] == 38 / 6
    assert row["no_answer_frac"] == row["degenerate_frac"] == 1 / 6 and row["rollout/truncated_frac"] == 2 / 6
    assert (row["groups"], row["groups_dropped"], row["groups_dropped/all_equal"],
            row["groups_dropped/no_correct"]) == (3, 2, 1, 1)
    assert row["tokens_per_s"] == 38 / 3.8 and row["rollout/tokens_per_s"] == 38 / 4.0   # the slowest rank's
    assert (row["loss"], row["grad_norm"], row["entropy"], row["lr"], row["grade_timeouts"]) == (0.25, 0.75, 1.5,
                                                                                                 1e-5, 1)
    assert row["time/step_s"] == 3.8 and row["time/update_s"] == 1.0 and math.isnan(row["rollout/logprob_gap"])
    assert "rollout/mismatch_kl" not in row          # the updater's keys pass through; none were given
    masked = step_metrics(tot, dict(update, mismatch_kl=0.01, is_weight_mean=0.9, is_masked_frac=0.1), seconds,
                          lr=1e-5)
    assert (masked["rollout/mismatch_kl"], masked["rollout/is_weight_mean"], masked["rollout/is_masked_frac"]) == \
        (0.01, 0.9, 0.1) and "rollout/is_truncated_frac" not in masked


def test_several_reward_functions_each_get_their_mean_and_unscorable_responses_are_counted():
    r = _rollouts()
    nan = math.nan
    # math's values, and a user's function that gave None for responses 2 and 5 (response 5: every function None)
    r.scores = torch.tensor([[1, 0.5], [-1, nan], [-1, 0.25], [-1, 0.0], [0, 1.0], [nan, nan]], dtype=torch.float64)
    rewards = torch.tensor([1.5, -1, -0.75, -1, 1.0, nan], dtype=torch.float64)
    tot = step_counts(r, rewards, select_groups(rewards, r.group_ids), 3, ("math", "my_rewards.py:brevity"))
    assert (tot["reward"], tot["scored"], tot["unscorable"]) == (-0.25, 5, 1)
    assert (tot["reward_fn/math"], tot["reward_fn/math/scored"]) == (-2.0, 5)
    assert (tot["reward_fn/brevity"], tot["reward_fn/brevity/scored"]) == (1.75, 4)
    row = step_metrics(tot, dict(loss=0.0, clip_frac=0.0, kl=0.0, entropy=0.0, grad_norm=0.0, nonfinite_skipped=0),
                       dict(rollout=1.0, grade=1.0, update=1.0, sync=0.0, slowest_rollout=1.0, step=3.0), lr=1e-5)
    assert row["reward/mean"] == -0.25 / 5 and row["reward/math"] == -2.0 / 5 and row["reward/brevity"] == 1.75 / 4
    assert row["reward/unscorable_frac"] == 1 / 6


def test_eval_metrics_are_pass_at_1_and_majority_vote():
    from lead_fast.rollout.scoring import ProblemResult

    results = [ProblemResult(correct=1, n=2, vote_correct=True, lengths=[3, 5], correct_lengths=[3], truncated=0),
               ProblemResult(correct=0, n=2, vote_correct=False, lengths=[7, 9], correct_lengths=[], truncated=1)]
    m = eval_metrics(eval_counts(results), seconds=2.5)
    assert m == {"eval/accuracy": 0.25, "eval/pass@1": 0.25, "eval/cons@n": 0.5, "eval/response_length": 6.0,
                 "eval/correct_length": 3.0, "time/eval_s": 2.5}
    # per level, every level a key on every rank (a rank may hold none of a level's problems)
    c = eval_counts(results, ["easy", "hard"], ("easy", "hard", "medium"))
    assert (c["pass1/easy"], c["problems/easy"], c["pass1/hard"], c["problems/medium"]) == (0.5, 1, 0.0, 0)
    m = eval_metrics(c, seconds=1.0)
    assert (m["eval/pass@1/easy"], m["eval/pass@1/hard"], m["eval/pass@1/medium"]) == (0.5, 0.0, 0.0)


def test_tensorboard_and_wandb_offline(embedded_model, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tracked"
    p = check(python(["-m", "lead_fast.train", *tiny_args(embedded_model, out, "--max-steps", "2",
                                                         "--run.report_to", '["tensorboard", "wandb"]')[2:]],
                     WANDB_MODE="offline", WANDB_SILENT="true"))
    assert "ETA" in p.stdout and "elapsed" in p.stdout
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "reward/mean", "eval/accuracy", "eval/pass@1", "time/step_s"} <= tags
    logged = [e.value for e in events.Scalars("eval/accuracy")]
    assert logged == pytest.approx([r["eval/accuracy"] for r in rows(out) if r.get("eval/accuracy") is not None])
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def test_a_failing_plot_does_not_fail_a_finished_run(embedded_model, tmp_path):
    broken = tmp_path / "site" / "matplotlib"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise RuntimeError("a broken matplotlib")\n')
    out = tmp_path / "o"
    p = check(train(embedded_model, out, "--max-steps", "1", PYTHONPATH=str(tmp_path / "site")))
    assert "the plot failed" in p.stdout and "the run did not" in p.stdout
    assert len(rows(out)) == 1 and latest_checkpoint(str(out)) is not None


def test_a_step_that_trained_nothing_says_why_and_enough_of_them_stop_the_run():
    from lead_fast.errors import NoSignalError
    from lead_fast.metrics import NoSignalWatch, no_signal

    dropped = {"groups": 16, "groups_dropped": 16, "groups_dropped/all_equal": 12,
               "groups_dropped/no_correct": 4, "accuracy": 0.0}
    assert no_signal(dropped) == "no update: all 16 groups dropped (12 with all rewards equal, 4 without a correct response)"
    assert no_signal({**dropped, "groups_dropped": 15}) is None and no_signal({"step": 0}) is None
    watch = NoSignalWatch(3)
    watch.check(1, dropped), watch.check(2, dropped)
    watch.check(3, {**dropped, "groups_dropped": 2})          # a step with signal starts the count again
    watch.check(4, dropped), watch.check(5, dropped)
    with pytest.raises(NoSignalError, match=r"3 steps in a row \(up to step 6\) trained nothing: every group was "
                                            r"dropped; no response was correct.*--run.warm_start_steps"):
        watch.check(6, dropped)
    never = NoSignalWatch(0)
    for _ in range(50):
        never.check(1, dropped)
