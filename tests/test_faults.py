"""Nothing lost, nothing silently wrong: a second run into the same directory, damaged checkpoints,
full and read-only disks, bad model directories and tokenizers, Ctrl-C during the warm start, and export
onto a file. Each case ends in one paragraph and a documented exit code, never a traceback."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lead_fast.checkpoint import damage, latest_checkpoint, list_checkpoints
from tests.launch import ROOT, check, env, python

RUN = ["--optim.prompts_per_step", "4", "--rollout.n", "4", "--eval-every", "0", "--data.eval_size", "8"]


def _train(model, out, *extra, **kw):
    return python(["-m", "lead_fast.train", "--preset", "tiny",
                   "--model", model, "--output-dir", str(out), *RUN, *extra], **kw)


def _rows(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _refused(p, code=2):
    assert p.returncode == code, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("lead_fast: ")]
    assert len(lines) == 1, p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def three_steps(embedded_model, tmp_path_factory):
    """A finished 3-step run with a checkpoint after every step (kept: all three)."""
    out = tmp_path_factory.mktemp("three") / "run"
    check(_train(embedded_model, out, "--max-steps", "3", "--save-every", "1", "--run.keep_last", "3"))
    return out


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_second_run_into_the_same_directory_is_refused(three_steps, embedded_model, tmp_path):
    out = _copy(three_steps, tmp_path)
    before = (out / "metrics.jsonl").read_text(), (out / "config.yaml").read_text()
    msg = _refused(_train(embedded_model, out, "--max-steps", "1"))
    assert f"output directory {out} already holds a run" in msg
    assert "checkpoints of steps 1..3" in msg and "--resume" in msg and "--run.overwrite" in msg
    assert ((out / "metrics.jsonl").read_text(), (out / "config.yaml").read_text()) == before
    assert [s for s, _ in list_checkpoints(str(out))] == [1, 2, 3]
    # --run.overwrite deletes the old run explicitly, and the new run's checkpoint survives its own pruning
    check(_train(embedded_model, out, "--max-steps", "1", "--run.overwrite", "true"))
    assert [r["step"] for r in _rows(out)] == [1]
    assert [s for s, _ in list_checkpoints(str(out))] == [1]


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
    out = _copy(three_steps, tmp_path)
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
        p = check(_train(embedded_model, out, "--max-steps", "4", "--resume"))
        assert "skipping damaged checkpoint" in p.stdout and "step-00000002 at step 2" in p.stdout
        assert [r["step"] for r in _rows(out)] == [1, 2, 3, 4]
        # pruning counts intact checkpoints only: the damaged one never displaces an intact one
        assert [s for s, _ in list_checkpoints(str(out))] == [2, 3, 4]


def _mount_tmpfs(path, size_bytes, *opts):
    path.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size_bytes}", *opts]), "tmpfs", str(path)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip()})")


def _checkpoint_need(model):
    from transformers import AutoConfig, AutoModelForCausalLM

    n = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model)).parameters())
    return int(1.05 * 12 * n)


def test_disk_full_during_save(embedded_model, tmp_path):
    need = _checkpoint_need(embedded_model)
    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, int(1.6 * need))   # room for the first checkpoint, not for a second beside it
    try:
        out = mnt / "run"
        msg = _refused(_train(embedded_model, out, "--max-steps", "3", "--save-every", "1"), code=1)
        assert "could not save the checkpoint of step 2" in msg and "full disk" in msg and "MiB free there" in msg
        assert f"The newest complete checkpoint is {out}/checkpoints/step-00000001" in msg
        assert sorted(os.listdir(out / "checkpoints")) == ["step-00000001"]   # no .tmp-step left behind
        assert damage(str(out / "checkpoints" / "step-00000001")) is None
    finally:
        subprocess.run(["umount", str(mnt)])


def test_no_room_for_a_checkpoint_is_refused_before_work(embedded_model, tmp_path):
    mnt = tmp_path / "tiny"
    _mount_tmpfs(mnt, _checkpoint_need(embedded_model) // 2)
    try:
        msg = _refused(_train(embedded_model, mnt / "run", "--max-steps", "1"))
        assert "MiB free, but one checkpoint needs about" in msg
    finally:
        subprocess.run(["umount", str(mnt)])


def test_read_only_output_dir(embedded_model, tmp_path):
    mnt = tmp_path / "ro"
    _mount_tmpfs(mnt, 2**20, "ro")
    try:
        msg = _refused(_train(embedded_model, mnt / "run", "--max-steps", "1"))
        assert f"cannot write to output directory {mnt / 'run'}: it is not writable" in msg
    finally:
        subprocess.run(["umount", str(mnt)])


def test_impossible_output_dirs(embedded_model, tmp_path):
    """No mount needed: this half runs wherever the read-only half above cannot."""
    f = tmp_path / "a_file"
    f.write_text("x")
    msg = _refused(_train(embedded_model, f / "run", "--max-steps", "1"))
    assert "a part of the path is a file, not a directory" in msg
    assert "is a file" in _refused(_train(embedded_model, f, "--max-steps", "1"))


def test_model_dir_without_weights_or_with_corrupt_weights(embedded_model, tmp_path):
    import torch

    from lead_fast.model import ModelError, load_model

    bad = tmp_path / "m"
    shutil.copytree(embedded_model, bad)
    weights = bad / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match=f"cannot load the weights in {bad}"):
        load_model(str(bad), torch.float32, torch.device("cpu"))
    weights.unlink()
    with pytest.raises(ModelError, match=f"model directory {bad} has no weights"):
        load_model(str(bad), torch.float32, torch.device("cpu"))
    msg = _refused(_train(str(bad), tmp_path / "o", "--max-steps", "1"))
    assert "has no weights" in msg


def test_budget_beyond_the_models_context_is_refused_before_work(embedded_model, tmp_path):
    """The embedded model has 256 positions: 32 prompt + 300 response tokens do not fit (vLLM would refuse
    to start; transformers would generate past the positions the model knows, silently)."""
    msg = _refused(_train(embedded_model, tmp_path / "o", "--rollout.max_new_tokens", "300"))
    assert "32 + 300 = 332 tokens, exceeds the model's context of 256 positions" in msg
    assert "--data.max_prompt_tokens or --rollout.max_new_tokens" in msg
    assert not (tmp_path / "o" / "metrics.jsonl").exists()


def test_prompts_all_over_the_budget_name_the_preset_and_the_flag(embedded_model, tmp_path):
    msg = _refused(_train(embedded_model, tmp_path / "o", "--data.max_prompt_tokens", "4"))
    assert "longer than data.max_prompt_tokens=4 tokens (the tiny preset's value unless you set it)" in msg
    assert "raise the limit with --data.max_prompt_tokens" in msg


def test_a_failing_plot_does_not_fail_a_finished_run(embedded_model, tmp_path):
    broken = tmp_path / "site" / "matplotlib"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise RuntimeError("a broken matplotlib")\n')
    out = tmp_path / "o"
    p = check(_train(embedded_model, out, "--max-steps", "1", PYTHONPATH=str(tmp_path / "site")))
    assert "the plot failed" in p.stdout and "the run did not" in p.stdout
    assert len(_rows(out)) == 1 and latest_checkpoint(str(out)) is not None


def test_tokenizer_whose_eos_is_not_a_model_token(embedded_model, tmp_path):
    from lead_fast.model import ModelError, load_tokenizer

    bad = tmp_path / "m"
    shutil.copytree(embedded_model, bad)
    cfg = json.loads((bad / "tokenizer_config.json").read_text())
    cfg["eos_token"] = "</s>"   # not in the vocabulary: transformers adds it with an id past the model's
    (bad / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"EOS '</s>' = id \d+, outside the model's vocabulary of \d+ tokens"):
        load_tokenizer(str(bad))
    # no eos_token at all: transformers 5 substitutes '<|endoftext|>' as a new token past the model's vocabulary
    cfg.pop("eos_token")
    (bad / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="has no EOS token|outside the model's vocabulary"):
        load_tokenizer(str(bad))


def test_ctrl_c_during_the_warm_start(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "lead_fast.train", "--output-dir", str(out), "--run.warm_start_steps", "100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env())
    deadline = time.time() + 240
    for line in proc.stdout:
        if "[warm start] step 1/" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "lead_fast: interrupted before training started" in err, err
    assert not (out / "base_model.tmp").exists() and not (out / "base_model").exists()


def test_export_onto_a_file_or_a_non_empty_directory(three_steps, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    p = python(["-m", "lead_fast.export", "--output-dir", str(three_steps), "--out", str(f)])
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == f"lead_fast.export: --out {f} is a file; give a directory path"
    d = tmp_path / "full"
    d.mkdir()
    (d / "keep.txt").write_text("mine")
    p = python(["-m", "lead_fast.export", "--output-dir", str(three_steps), "--out", str(d)])
    assert p.returncode == 2 and "is not empty" in p.stderr and (d / "keep.txt").read_text() == "mine"
    check(python(["-m", "lead_fast.export", "--output-dir", str(three_steps), "--out", str(d), "--overwrite"]))
    assert not (d / "keep.txt").exists() and (d / "model.safetensors").exists()
    assert not any(n.startswith(".tmp-export") for n in os.listdir(tmp_path))


def test_relative_paths_resolve_from_any_directory(embedded_model, tmp_path):
    """A run started with relative --model and --output-dir exports from another working directory."""
    shutil.copytree(embedded_model, tmp_path / "m")
    p = subprocess.run([sys.executable, "-m", "lead_fast.train", "--preset", "tiny",
                        "--model", "m", "--output-dir", "run", *RUN,
                        "--max-steps", "1"], capture_output=True, text=True, cwd=tmp_path, env=env(), timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-00000001" / "trainer_state.json").read_text())
    assert state["config"]["model"]["path"] == str(tmp_path / "m")            # stored absolute
    check(python(["-m", "lead_fast.export", "--output-dir", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]))
    assert (tmp_path / "hf" / "model.safetensors").exists()
