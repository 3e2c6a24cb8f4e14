"""A TRL user's reward module and a TRL-format conversational dataset, trained on unchanged (two ranks, the
tiny model with a chat template); a reward function that fails mid-run stops it before the update, with the
last completed step saved."""

import json
import os

from lead_fast.checkpoint import latest_checkpoint
from tests.helpers.launch import check, python, torchrun
from tests.helpers.runs import refused, rows, tiny_args, train

REWARDS = ["--algo.reward_funcs", "[trl.rewards:accuracy_reward, tests/helpers/user_rewards.py:brevity]",
           "--algo.reward_weights", "[1.0, 0.5]"]


def test_a_trl_reward_module_and_conversational_data_train_on_two_ranks(chat_model, conversational_data, tmp_path):
    out = tmp_path / "run"
    p = check(torchrun(2, tiny_args(chat_model, out, "--data", conversational_data, "--data.answer_field", "solution",
                                    "--max-steps", "2", *REWARDS), timeout=900))
    got = rows(out)
    assert [r["step"] for r in got] == [0, 1, 2], p.stdout[-3000:]
    steps = got[1:]
    for r in steps:
        # TRL's accuracy_reward is 1 or 0 (never None here: every solution parses); brevity in [-1, 0)
        assert 0 < r["reward/accuracy_reward"] <= 1 and -1 <= r["reward/brevity"] < 0
        # without the math reward, "correct" is a total reward > 0: here exactly when accuracy_reward is 1
        assert r["accuracy"] == r["reward/accuracy_reward"]
    assert any(r["grad_norm"] > 0 for r in steps) and "eval/accuracy" in got[-1]
    import yaml

    stored = yaml.safe_load((out / "config.yaml").read_text())["algo"]["reward_funcs"]
    # a file path made absolute (the stored config resumes from any directory); a module name stays a name
    assert stored == ["trl.rewards:accuracy_reward", f"{os.getcwd()}/tests/helpers/user_rewards.py:brevity"]
    # the held-out TRL prompts, for the eval command: chat messages under "prompt", the gold answer
    held_out = [json.loads(line) for line in (out / "eval_problems.jsonl").read_text().splitlines()]
    assert len(held_out) == 8 and all(isinstance(r["prompt"], list) and r["answer"] for r in held_out)
    # the eval command scores the trained model on them, rendered as in training (the chat template)
    check(python(["-m", "lead_fast.export", "--output-dir", str(out), "--out", str(tmp_path / "exp")]))
    check(python(["-m", "lead_fast.eval", "--model", str(tmp_path / "exp"), "--data", str(out / "eval_problems.jsonl"),
                  "--output-dir", str(tmp_path / "ev"), "--run-dir", str(out), "--n", "2", "--limit", "4",
                  "--max-new-tokens", "64"], timeout=600))
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["problems"] == 4 and summary["pass@1"] > 0, summary


def test_a_reward_function_failing_mid_run_stops_before_the_update(embedded_model, tmp_path):
    out = tmp_path / "run"
    p = train(embedded_model, out, "--max-steps", "3", "--algo.reward_funcs", "[math, tests.helpers.user_rewards:flaky]",
              timeout=600)
    said = refused(p, code=1)
    assert said.startswith("lead_fast: stopped: the rollouts of step 2 failed (rank 0: RewardFunctionError: reward "
                           "function 'tests.helpers.user_rewards:flaky' failed at step 2 on 16 completions: it raised "
                           "ValueError: no rubric for this prompt (user_rewards.py line "), said
    assert "in flaky). No update was applied for this step." in said
    assert said.endswith(f"step 1 was saved first ({out / 'checkpoints' / 'step-00000001'}). Remove the cause, then "
                         "continue with --resume."), said
    assert [r["step"] for r in rows(out)] == [1] and latest_checkpoint(str(out)).endswith("step-00000001")
    # the function fixed (here: left out), the run continues from the saved step
    check(train(embedded_model, out, "--max-steps", "3", "--algo.reward_funcs", "[math]", "--resume", timeout=600))
    assert [r["step"] for r in rows(out)] == [1, 2, 3]
