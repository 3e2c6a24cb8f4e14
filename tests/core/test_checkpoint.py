"""Checkpoints and resume: exact resume (the same rows and the same checkpoint tensors as the unbroken run),
resume on another world size, SIGKILL during a save and SIGTERM mid-run, pruning, damaged newest checkpoints,
full disks, and a save before the first optimizer step leaving AdamW untouched."""

import json
import os
import subprocess
import sys

import pytest
import torch

from lead_fast.checkpoint import damage, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from lead_fast.distributed import setup_distributed
from tests.helpers.compare import assert_same_checkpoint, assert_same_rows
from tests.helpers.launch import HELPERS, ROOT, check, env, python, torchrun
from tests.helpers.runs import copy_run, mount_tmpfs, refused, rows, said_under_torchrun, tiny_args, train


def _model_and_opt():
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    return m, torch.optim.AdamW(m.parameters(), lr=0.1)


def _step(m, opt):
    m(torch.ones(2, 4)).square().sum().backward()
    opt.step()
    opt.zero_grad()


def test_save_before_the_first_step_leaves_the_optimizer_untouched(tmp_path):
    setup_distributed()
    plain, plain_opt = _model_and_opt()
    saved, saved_opt = _model_and_opt()
    path = save_checkpoint(str(tmp_path), 0, saved, saved_opt, {"step": 0, "run_id": "r"})
    assert not saved_opt.state                                  # emptied again after saving
    _step(plain, plain_opt)
    _step(saved, saved_opt)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), saved.parameters()))
    # a resume from that checkpoint starts from an untouched optimizer too
    resumed, resumed_opt = _model_and_opt()
    assert load_checkpoint(path, resumed, resumed_opt)["optimizer_stepped"] is False
    assert not resumed_opt.state
    _step(resumed, resumed_opt)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), resumed.parameters()))
    # after a real step, the state is saved and restored as it is
    path = save_checkpoint(str(tmp_path), 1, plain, plain_opt, {"step": 1, "run_id": "r"})
    again, again_opt = _model_and_opt()
    assert load_checkpoint(path, again, again_opt)["optimizer_stepped"] is True
    assert int(again_opt.state[next(again.parameters())]["step"]) == 1


def test_resume_is_exact(embedded_model, tmp_path):
    """A run stopped after step 2 and resumed ends where the unbroken run ends: the step-4 checkpoints are
    equal tensor for tensor (weights, AdamW's moments and step counts, scheduler, every rank's RNG), and
    every logged value of every step is equal by key. So does a run whose rollout engine died in step 4."""
    full, part = tmp_path / "full", tmp_path / "part"
    check(torchrun(2, tiny_args(embedded_model, full, "--max-steps", "4", "--save-every", "2")))
    check(torchrun(2, tiny_args(embedded_model, part, "--max-steps", "2", "--save-every", "2")))
    p = torchrun(2, tiny_args(embedded_model, part, "--max-steps", "4", "--save-every", "2", "--resume"))
    check(p)
    assert "resumed from" in p.stdout
    a, b = rows(full), rows(part)
    assert [r["step"] for r in a] == [0, 1, 2, 3, 4]
    assert_same_rows(a, b)
    assert a[3]["loss"] is not None and a[4]["loss"] is not None and "lr" in a[3]  # the compared steps did update
    step4 = "checkpoints/step-00000004"
    assert assert_same_checkpoint(full / step4, part / step4) > 20

    # The rollout engine's process SIGKILLed as rank 1 asks it for step 4's rollouts (its 6th generate: the
    # evals at steps 0 and 2 count): step 3, completed, is saved first; one paragraph, exit 1; --resume ends
    # where the unbroken run ends.
    killed = tmp_path / "killed"
    args = tiny_args(embedded_model, killed, "--max-steps", "4", "--save-every", "2")
    p = torchrun(2, [str(HELPERS / "faults.py"), "kill_engine", "6", "1", *args[2:]])
    said = said_under_torchrun(p, 1)
    assert said.startswith("lead_fast: stopped: the rollouts of step 4 failed (rank 1: EngineProcessError: the "
                           "hf rollout engine's process was killed by signal 9"), said
    assert "step 3 was saved first" in said and said.endswith("continue with --resume."), said
    assert [r["step"] for r in rows(killed)] == [0, 1, 2, 3]
    check(torchrun(2, [*args, "--resume"]))
    assert_same_rows(a, rows(killed))
    assert assert_same_checkpoint(full / step4, killed / step4) > 20


def test_resume_with_other_world_size(embedded_model, tmp_path):
    """A 2-rank checkpoint resumed on 1 rank: the policy holds exactly the checkpoint's weights (compared
    with an export of it, and unlike the base model's), then the run goes on from its step. Then back: the
    1-rank checkpoint (an unwrapped policy, plain tensors) loads exactly into 2 FSDP2 shards."""
    out = tmp_path / "ws"
    check(torchrun(2, tiny_args(embedded_model, out, "--max-steps", "2", "--save-every", "2")))
    check(python(["-m", "lead_fast.export", "--output-dir", str(out), "--out", str(tmp_path / "hf")]))
    res = tmp_path / "resumed.json"
    check(torchrun(1, [str(HELPERS / "resumed_weights.py"), str(res), str(tmp_path / "hf"), embedded_model,
                       *tiny_args(embedded_model, out, "--max-steps", "3", "--resume")[2:]]))
    r = json.loads(res.read_text())
    assert r["world"] == 1 and r["start_step"] == 2 and r["tensors"] > 0
    assert r["export"] == 0.0 and r["base"] > 1e-4, r      # the trained weights, loaded exactly
    p = torchrun(1, tiny_args(embedded_model, out, "--max-steps", "3", "--resume"))
    check(p)
    assert "resumed from" in p.stdout and [r["step"] for r in rows(out)] == [0, 1, 2, 3]
    check(python(["-m", "lead_fast.export", "--output-dir", str(out), "--out", str(tmp_path / "hf3")]))
    check(torchrun(2, [str(HELPERS / "resumed_weights.py"), str(res), str(tmp_path / "hf3"), embedded_model,
                       *tiny_args(embedded_model, out, "--max-steps", "4", "--resume")[2:]]))
    r = json.loads(res.read_text())
    assert r["world"] == 2 and r["start_step"] == 3 and r["export"] == 0.0 and r["base"] > 1e-4, r


def test_sigkill_during_save_leaves_previous_checkpoint(embedded_model, tmp_path):
    out = tmp_path / "kill"
    p = torchrun(2, [str(HELPERS / "faults.py"), "kill_during_save", "3",
                     *tiny_args(embedded_model, out, "--max-steps", "4", "--save-every", "1", "--run.keep_last", "5")[2:]])
    assert p.returncode != 0
    ck = out / "checkpoints"
    names = sorted(os.listdir(ck))
    assert "step-00000002" in names and "step-00000003" not in names, names
    assert any(n.startswith(".tmp-step-00000003") for n in names), names  # the half-written one
    p = torchrun(2, tiny_args(embedded_model, out, "--max-steps", "4", "--save-every", "1", "--resume"))
    check(p)
    assert "resumed from" in p.stdout and "step-00000002" in p.stdout
    assert [r["step"] for r in rows(out)] == [0, 1, 2, 3, 4]
    assert (ck / "step-00000004").exists() and not (ck / ".tmp-step-00000003").exists()


def test_sigterm_saves_and_resumes(embedded_model, tmp_path):
    """A preempted run (SIGTERM) finishes its step, saves, and --resume carries on from there."""
    import signal
    import time

    out = tmp_path / "term"
    cmd = [sys.executable, "-m", "lead_fast.train", *tiny_args(embedded_model, out, "--max-steps", "50")[2:]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env())
    lines = []
    deadline = time.time() + 300
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 2 |") or time.time() > deadline:
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=300)
    text = "".join(lines) + rest
    assert proc.returncode == 0, text[-3000:]
    assert "stopped by signal after step" in text
    steps = [r["step"] for r in rows(out)]
    saved = int(text.split("stopped by signal after step ")[1].split(";")[0])
    assert 2 <= saved < 50 and steps[-1] == saved
    assert (out / "checkpoints" / f"step-{saved:08d}").exists()
    p = torchrun(1, tiny_args(embedded_model, out, "--max-steps", str(saved + 1), "--resume"))
    check(p)
    assert f"at step {saved}" in p.stdout and [r["step"] for r in rows(out)][-1] == saved + 1


def test_pruning_keeps_the_checkpoint_just_written_and_other_runs(tmp_path):
    from lead_fast.checkpoint import STATE_FILE, _prune

    root = tmp_path / "checkpoints"
    for step, run in ((1, "b"), (2, "a"), (3, "a"), (4, "a")):
        d = root / f"step-{step:08d}"
        d.mkdir(parents=True)
        (d / STATE_FILE).write_text(json.dumps({"step": step, "run_id": run, "files": {}}))
    _prune(str(tmp_path), keep_last=2, run_id="b", just_written=str(root / "step-00000001"))
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [1, 2, 3, 4]   # run a's are not run b's
    _prune(str(tmp_path), keep_last=2, run_id="a", just_written=str(root / "step-00000004"))
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [1, 3, 4]


@pytest.mark.parametrize("how", ["delete_shard", "truncate_shard", "break_state"])
def test_damaged_newest_checkpoint_falls_back(three_steps, embedded_model, how, tmp_path):
    out = copy_run(three_steps, tmp_path)
    newest = out / "checkpoints" / "step-00000003"
    shard = sorted(newest.glob("*.distcp"))[0]
    if how == "delete_shard":
        shard.unlink()
        want = f"{shard.name} is missing"
    elif how == "truncate_shard":
        size = shard.stat().st_size
        with open(shard, "r+b") as f:
            f.truncate(size // 2)
        want = f"{shard.name} has {size // 2} bytes, {size} were written"
    else:
        (newest / "trainer_state.json").write_text('{"step": 3, "sch')
        want = "trainer_state.json is unreadable"
    assert want in damage(str(newest))
    warnings = []
    assert latest_checkpoint(str(out), warn=warnings.append).endswith("step-00000002")
    assert len(warnings) == 1 and "skipping damaged checkpoint" in warnings[0] and want in warnings[0]
    if how == "delete_shard":   # the commands a user runs: resume and export both take step 2
        p = check(python(["-m", "lead_fast.export", "--output-dir", str(out), "--out", str(tmp_path / "hf")]))
        assert "skipping damaged checkpoint" in p.stderr and "exported " + str(out / "checkpoints" / "step-00000002") in p.stdout
        p = check(train(embedded_model, out, "--max-steps", "4", "--resume"))
        assert "skipping damaged checkpoint" in p.stdout and "step-00000002 at step 2" in p.stdout
        assert [r["step"] for r in rows(out)] == [1, 2, 3, 4]
        # pruning counts intact checkpoints only: the damaged one never displaces an intact one
        assert [s for s, _ in list_checkpoints(str(out))] == [2, 3, 4]


def _checkpoint_need(model):
    from transformers import AutoConfig, AutoModelForCausalLM

    n = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).parameters())
    return int(1.05 * 12 * n)


def test_disk_full_during_save(embedded_model, tmp_path):
    need = _checkpoint_need(embedded_model)
    mnt = tmp_path / "small"
    mount_tmpfs(mnt, int(1.6 * need))   # room for the first checkpoint, not for a second beside it
    try:
        out = mnt / "run"
        msg = refused(train(embedded_model, out, "--max-steps", "3", "--save-every", "1"), code=1)
        assert "could not save the checkpoint of step 2" in msg and "full disk" in msg and "MiB free there" in msg
        assert f"The newest complete checkpoint is {out}/checkpoints/step-00000001" in msg
        assert sorted(os.listdir(out / "checkpoints")) == ["step-00000001"]   # no .tmp-step left behind
        assert damage(str(out / "checkpoints" / "step-00000001")) is None
    finally:
        subprocess.run(["umount", str(mnt)])


def test_no_room_for_a_checkpoint_is_refused_before_work(embedded_model, tmp_path):
    mnt = tmp_path / "tiny"
    mount_tmpfs(mnt, _checkpoint_need(embedded_model) // 2)
    try:
        msg = refused(train(embedded_model, mnt / "run", "--max-steps", "1"))
        assert "MiB free, but one checkpoint needs about" in msg
    finally:
        subprocess.run(["umount", str(mnt)])


class _RunsCode:
    """What a hostile file would carry: unpickling it runs a shell command."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_a_checkpoint_is_data_not_code(three_steps, embedded_model, tmp_path):
    """Stored rollout batches load with weights_only: lead_fast's own batches come back equal; a file that
    carries anything else is refused by name, nothing of it runs, and --resume falls back to the step before."""
    from lead_fast.checkpoint import load_batches
    from lead_fast.orders import BATCH_TYPES, Batch
    from lead_fast.rollout.base import Completion
    from lead_fast.rollout.graded import GradedRollouts

    mine = [Batch(3, 2, [5, 7], GradedRollouts([Completion([1, 2], "stop", [-0.5, -0.25])], ["x"], torch.tensor([0]),
                                               [1], 0, 1.5, 0.25), 0.5, (1.0, 2.0))]
    torch.save(mine, tmp_path / "mine.pt")
    back = load_batches(str(tmp_path / "mine.pt"), BATCH_TYPES)
    assert repr(back) == repr(mine)     # dataclasses with a tensor inside: compared field by field as printed

    out = copy_run(three_steps, tmp_path)
    newest = out / "checkpoints" / "step-00000003"
    ran = tmp_path / "ran"
    torch.save([_RunsCode(f"touch {ran}")], newest / "batches-rank0.pt")
    state = json.loads((newest / "trainer_state.json").read_text())
    state["files"]["batches-rank0.pt"] = (newest / "batches-rank0.pt").stat().st_size
    (newest / "trainer_state.json").write_text(json.dumps(state))
    said = damage(str(newest), BATCH_TYPES)
    assert said.startswith("batches-rank0.pt holds objects other than rollout batches and was not loaded"), said
    assert not ran.exists()
    p = check(train(embedded_model, out, "--max-steps", "4", "--save-every", "1", "--resume"))
    assert f"skipping damaged checkpoint {newest}: batches-rank0.pt holds objects other than" in p.stdout + p.stderr
    assert "resumed from" in p.stdout and "step-00000002" in p.stdout
    assert not ran.exists()
