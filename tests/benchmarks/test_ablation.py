"""benchmarks/ablation.py: each rung of the ladder changes only its own part of GRPO-LEAD (the settings, and what
they do to one fixed batch's rewards and advantages through the trainer's own functions), the mixed task has
its spread of levels, and the quick mode runs every configuration end to end."""

import json

import pytest
import torch

from lead_fast.algo import CORRECT, DEGENERATE, NO_ANSWER, WRONG, difficulty_weight, lead_advantages, select_groups
from lead_fast.algo.reward_funcs import RewardSettings
from lead_fast.algo.rewards import length_regularized
from lead_fast.cli import parse_args
from tests.benchmarks.test_benchmarks import _load

ablation = _load("ablation")


def _config(name):
    return parse_args(["--preset", "tiny", *ablation.flags({**ablation.COMMON, **ablation.config_values(name)})])


def _differing(a, b) -> set[str]:
    return {f"{s}.{k}" for s in ("model", "data", "rollout", "algo", "optim", "run")
            for k, v in vars(getattr(a, s)).items() if getattr(getattr(b, s), k) != v}


def test_each_rung_sets_only_its_own_switches():
    cfg = {n: _config(n) for n in ablation.CONFIGS}
    assert _differing(cfg["grpo"], cfg["+length"]) == {"algo.alpha"}
    assert _differing(cfg["+length"], cfg["+penalty"]) == {"algo.incorrect_reward", "algo.format_error_reward",
                                                             "algo.degenerate_reward"}
    assert _differing(cfg["+penalty"], cfg["lead"]) == {"algo.reweight"}
    assert _differing(cfg["grpo"], cfg["grpo_trl"]) == {"algo.advantage_eps", "algo.drop_no_signal",
                                                          "algo.drop_no_correct"}
    # full GRPO-LEAD is the tiny preset itself on the mixed task
    assert _differing(cfg["lead"], parse_args(["--preset", "tiny", "--data.task", "mixed"])) == \
        {"data.eval_size", "run.eval_every"}


def _step(cfg, outcomes, lengths, group_ids):
    """What the trainer does to one batch: the math reward's values, length regularization, advantages with the
    difficulty weight (applied in the loss head in training, the same product), the group filter."""
    values = dict(zip((CORRECT, WRONG, NO_ANSWER, DEGENERATE), RewardSettings.from_config(cfg.algo).outcome_rewards))
    base = torch.tensor([values[o] for o in outcomes], dtype=torch.float64)
    rewards = length_regularized(base, lengths, group_ids, alpha=cfg.algo.alpha, min_short_len=cfg.algo.min_short_len)
    adv, rho = lead_advantages(rewards, group_ids, reweight=cfg.algo.reweight, eps=cfg.algo.advantage_eps,
                               scale=cfg.algo.scale_rewards == "group")
    keep = select_groups(rewards, group_ids, drop_no_signal=cfg.algo.drop_no_signal,
                         drop_no_correct=cfg.algo.drop_no_correct).keep
    return rewards, adv, rho, keep


def test_each_rung_changes_only_what_its_part_should_on_one_batch():
    g = torch.Generator().manual_seed(0)
    outcomes = [CORRECT, WRONG, CORRECT, NO_ANSWER, CORRECT, CORRECT, CORRECT, WRONG,     # easy-ish: 5 of 8
                WRONG, DEGENERATE, CORRECT, WRONG, NO_ANSWER, WRONG, WRONG, WRONG]       # hard: 1 of 8
    lengths = torch.randint(3, 60, (16,), generator=g).double()
    group_ids = torch.arange(16) // 8
    correct = torch.tensor([o == CORRECT for o in outcomes])
    r = {n: _step(_config(n), outcomes, lengths, group_ids) for n in ablation.CONFIGS}
    # +length vs grpo: only the rewards of correct responses change
    changed = r["+length"][0] != r["grpo"][0]
    assert changed.any() and not (changed & ~correct).any()
    # +penalty vs +length: only the rewards of the others
    changed = r["+penalty"][0] != r["+length"][0]
    assert changed.any() and not (changed & correct).any()
    # lead vs +penalty: the same rewards and groups; each advantage times its difficulty weight
    assert torch.equal(r["lead"][0], r["+penalty"][0]) and torch.equal(r["lead"][3], r["+penalty"][3])
    adv, plain, rho = r["lead"][1], r["+penalty"][1], r["+penalty"][2]
    w = torch.where(plain > 0, difficulty_weight(rho.double()), difficulty_weight(1 - rho.double())).float()
    torch.testing.assert_close(adv, plain * w)
    assert not torch.allclose(adv, plain)
    # grpo_trl vs grpo: the same rewards; advantages only through the std's epsilon
    assert torch.equal(r["grpo_trl"][0], r["grpo"][0])
    torch.testing.assert_close(r["grpo_trl"][1], r["grpo"][1], rtol=1e-3, atol=0)


def test_the_mixed_task_has_three_levels_and_its_warm_start_slips_more_on_harder_ones():
    from lead_fast.task import mixed_problems
    from lead_fast.warm_start import synthetic_corpus

    problems = mixed_problems()
    assert len(problems) == 600 and len({p.problem for p in problems}) == 600
    assert {lv: sum(p.columns["level"] == lv for p in problems) for lv in ("easy", "medium", "hard")} == \
        {"easy": 200, "medium": 200, "hard": 200}
    from lead_fast.config import DataConfig
    from lead_fast.errors import DataError
    from lead_fast.task import load_task

    task = load_task(DataConfig(task="mixed", eval_size=96), seed=3)     # held out: the same share of each level
    assert [sum(p.columns["level"] == lv for p in task.eval) for lv in ("easy", "medium", "hard")] == [32, 32, 32]
    assert len(task.train) == 504 and not {p.problem for p in task.train} & {p.problem for p in task.eval}
    with pytest.raises(DataError, match="needs at least 3"):
        load_task(DataConfig(task="mixed", eval_size=2), seed=0)
    right = {"easy": [], "medium": [], "hard": []}
    for p, sol in synthetic_corpus(6000, seed=0, task="mixed"):
        right[p.columns["level"]].append(sol.endswith(f"\\boxed{{{p.answer}}}"))
    rate = {lv: sum(v) / len(v) for lv, v in right.items()}
    assert rate["easy"] == pytest.approx(0.8, abs=0.03) and rate["medium"] == pytest.approx(0.5, abs=0.03)
    assert rate["hard"] == pytest.approx(0.2, abs=0.03)


def test_quick_ablation_runs_every_configuration(tmp_path):
    out = tmp_path / "ablation.json"
    res = ablation.main(["--quick", "--out", str(out), "--work", str(tmp_path / "work")])
    data = json.loads(out.read_text())
    assert set(data["runs"]) == set(ablation.CONFIGS) and (tmp_path / "ablation.png").exists()
    for name, runs in data["runs"].items():
        (run,) = runs
        assert [c["step"] for c in run["curve"]] == [0, 2], name
        assert 0 <= run["pass1"] <= 1 and {"eval/pass@1/easy", "eval/pass@1/hard"} <= set(run["curve"][-1])
    assert set(data["paired"]) == {"+length - grpo", "+penalty - +length", "lead - +penalty", "grpo_trl - grpo"}
    assert res["meta"]["quick"]
