"""Disaggregated mode (rollout.mode disaggregated): rollout ranks generate, trainer ranks train, up to
rollout.max_staleness updates apart. Real torchrun, gloo, the tiny model and the transformers engine."""


from tests.helpers.compare import assert_same_learning
from tests.helpers.launch import HELPERS, check, torchrun
from tests.helpers.runs import rows, said_under_torchrun, tiny_args


def _args(model, out, *extra):
    # with the engine's log-probs, so that the rollout-correction metrics are compared too
    return tiny_args(model, out, "--rollout.logprobs", "true", *extra)


def test_staleness_0_is_colocated_and_survives_its_engine(embedded_model, tmp_path):
    """1 rollout + 2 trainer ranks, max_staleness 0: the same losses, rewards and evals as 2 colocated ranks
    (the rollout rank generates each trainer's share with that trainer's seed and the same weights); a
    rollout engine that dies costs only the step in flight."""
    colo, dis = tmp_path / "colo", tmp_path / "dis"
    check(torchrun(2, _args(embedded_model, colo, "--max-steps", "3")))
    p = check(torchrun(3, _args(embedded_model, dis, "--max-steps", "3", "--rollout.mode", "disaggregated")))
    assert "1 rollout + 2 trainer rank(s), max_staleness 0" in p.stdout
    a, b = rows(colo), rows(dis)
    assert_same_learning(a, b)
    assert a[-1]["loss"] is not None and a[-1]["eval/accuracy"] is not None
    train = [r for r in b if r["step"] > 0]
    assert all(r["rollout/staleness"] == 0 and r["time/overlap_frac"] == 0 for r in train)  # in turn, never both

    # The rollout rank's engine process SIGKILLed as it makes step 2's batch (its 5th generate: the eval at
    # step 0 and step 1's batch took two each, one per trainer share): the trainer ranks save step 1 and
    # stop the run, their lead says so (rank 0 is the rollout rank), and --resume logs what the unbroken
    # run logged.
    killed = tmp_path / "killed"
    args = _args(embedded_model, killed, "--max-steps", "3", "--rollout.mode", "disaggregated")
    said = said_under_torchrun(torchrun(3, [str(HELPERS / "faults.py"), "kill_engine", "5", "0", *args[2:]]), 1)
    assert said.startswith("lead_fast: stopped: the rollouts of step 2 failed (rank 0: EngineProcessError"), said
    assert "step 1 was saved first" in said, said
    check(torchrun(3, [*args, "--resume"]))
    assert_same_learning(b, rows(killed))


def test_staleness_1_overlaps_and_resumes_exactly_after_sigterm_mid_generation(embedded_model, tmp_path):
    """max_staleness 1: batch k+1 is generated (with the weights before update k) while batch k trains. A
    SIGTERM that reaches the rollout rank halfway through making batch 3 stops the run after that step with
    the next batch (already made with older weights) in the checkpoint; --resume then logs what the unbroken
    run logged, step for step."""
    full, part = tmp_path / "full", tmp_path / "part"
    extra = ("--rollout.mode", "disaggregated", "--rollout.max_staleness", "1", "--max-steps", "6")
    check(torchrun(3, _args(embedded_model, full, *extra)))
    a = rows(full)
    assert [r["rollout/staleness"] for r in a if r["step"] > 0] == [0, 1, 1, 1, 1, 1]
    assert sum(r["time/overlap_frac"] for r in a if r["step"] > 0) > 0

    p = torchrun(3, [str(HELPERS / "faults.py"), "sigterm_in_batch", "3", *_args(embedded_model, part, *extra)[2:]])
    check(p)
    assert "stopped by signal after step 4" in p.stdout, p.stdout[-2000:]
    saved = part / "checkpoints" / "step-00000004"
    assert (saved / "batches-rank0.pt").exists() and (saved / "batches-rank1.pt").exists()
    p = check(torchrun(3, _args(embedded_model, part, *extra, "--resume")))
    assert "resumed from" in p.stdout
    assert_same_learning(a, rows(part))
