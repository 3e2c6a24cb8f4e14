"""Exact resume, atomic checkpoints under SIGKILL, export for serving, and clear errors on bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.compare import assert_same_checkpoint, assert_same_rows
from tests.launch import HELPERS, ROOT, check, env, python, torchrun


def _args(model, out, *extra):
    # the default (tiny) preset with fewer prompts per step and a smaller eval
    return ["-m", "lead_fast.train", "--preset", "tiny",
            "--model", model, "--output-dir", str(out), "--optim.prompts_per_step", "8",
            "--eval-every", "2", "--data.eval_size", "8", "--rollout.eval_n", "1", *extra]


def _rows(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_resume_is_exact(embedded_model, tmp_path):
    """A run stopped after step 2 and resumed ends where the unbroken run ends: the step-4 checkpoints are
    equal tensor for tensor (weights, AdamW's moments and step counts, scheduler, every rank's RNG), and
    every logged value of every step is equal by key."""
    full, part = tmp_path / "full", tmp_path / "part"
    check(torchrun(2, _args(embedded_model, full, "--max-steps", "4", "--save-every", "2")))
    check(torchrun(2, _args(embedded_model, part, "--max-steps", "2", "--save-every", "2")))
    p = torchrun(2, _args(embedded_model, part, "--max-steps", "4", "--save-every", "2", "--resume"))
    check(p)
    assert "resumed from" in p.stdout
    a, b = _rows(full), _rows(part)
    assert [r["step"] for r in a] == [0, 1, 2, 3, 4]
    assert_same_rows(a, b)
    assert a[3]["loss"] is not None and a[4]["loss"] is not None and "lr" in a[3]  # the compared steps did update
    step4 = "checkpoints/step-00000004"
    assert assert_same_checkpoint(full / step4, part / step4) > 20


def test_resume_with_other_world_size(embedded_model, tmp_path):
    """A 2-rank checkpoint resumed on 1 rank: the policy holds exactly the checkpoint's weights (compared
    with an export of it, and unlike the base model's), then the run goes on from its step. Then back: the
    1-rank checkpoint (an unwrapped policy, plain tensors) loads exactly into 2 FSDP2 shards."""
    out = tmp_path / "ws"
    check(torchrun(2, _args(embedded_model, out, "--max-steps", "2", "--save-every", "2")))
    check(python(["-m", "lead_fast.export", "--output-dir", str(out), "--out", str(tmp_path / "hf")]))
    res = tmp_path / "resumed.json"
    check(torchrun(1, [str(HELPERS / "resumed_weights.py"), str(res), str(tmp_path / "hf"), embedded_model,
                       *_args(embedded_model, out, "--max-steps", "3", "--resume")[2:]]))
    r = json.loads(res.read_text())
    assert r["world"] == 1 and r["start_step"] == 2 and r["tensors"] > 0
    assert r["export"] == 0.0 and r["base"] > 1e-4, r      # the trained weights, loaded exactly
    p = torchrun(1, _args(embedded_model, out, "--max-steps", "3", "--resume"))
    check(p)
    assert "resumed from" in p.stdout and [r["step"] for r in _rows(out)] == [0, 1, 2, 3]
    check(python(["-m", "lead_fast.export", "--output-dir", str(out), "--out", str(tmp_path / "hf3")]))
    check(torchrun(2, [str(HELPERS / "resumed_weights.py"), str(res), str(tmp_path / "hf3"), embedded_model,
                       *_args(embedded_model, out, "--max-steps", "4", "--resume")[2:]]))
    r = json.loads(res.read_text())
    assert r["world"] == 2 and r["start_step"] == 3 and r["export"] == 0.0 and r["base"] > 1e-4, r


def test_sigkill_during_save_leaves_previous_checkpoint(embedded_model, tmp_path):
    out = tmp_path / "kill"
    p = torchrun(2, [str(HELPERS / "faults.py"), "kill_during_save", "3",
                     *_args(embedded_model, out, "--max-steps", "4", "--save-every", "1", "--run.keep_last", "5")[2:]])
    assert p.returncode != 0
    ck = out / "checkpoints"
    names = sorted(os.listdir(ck))
    assert "step-00000002" in names and "step-00000003" not in names, names
    assert any(n.startswith(".tmp-step-00000003") for n in names), names  # the half-written one
    p = torchrun(2, _args(embedded_model, out, "--max-steps", "4", "--save-every", "1", "--resume"))
    check(p)
    assert "resumed from" in p.stdout and "step-00000002" in p.stdout
    assert [r["step"] for r in _rows(out)] == [0, 1, 2, 3, 4]
    assert (ck / "step-00000004").exists() and not (ck / ".tmp-step-00000003").exists()


def test_export_generates_like_the_trained_model(embedded_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "exp"
    res = tmp_path / "greedy.json"
    check(torchrun(2, [str(HELPERS / "train_then_greedy.py"), str(res),
                        *_args(embedded_model, out, "--max-steps", "2")[2:]]))
    check(python(["-m", "lead_fast.export", "--output-dir", str(out), "--out", str(tmp_path / "hf")]))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert any(f.endswith(".safetensors") for f in os.listdir(tmp_path / "hf"))
    want = json.loads(res.read_text())
    base = AutoModelForCausalLM.from_pretrained(embedded_model)
    differs_from_base = False
    for prompt, greedy in zip(want["prompts"], want["greedy"]):
        ids = torch.tensor([prompt])
        got = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
        if tok.eos_token_id in got:
            got = got[: got.index(tok.eos_token_id) + 1]
        assert got == greedy
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), base.named_parameters()):
        differs_from_base |= not torch.equal(p1, p2)
    assert differs_from_base  # the export holds the trained weights, not the base model's


def test_nonfinite_step_is_skipped_and_counted(embedded_model, tmp_path):
    res = tmp_path / "nf.json"
    check(torchrun(2, [str(HELPERS / "nonfinite_update.py"), embedded_model, str(res)]))
    r = json.loads(res.read_text())
    assert r["skipped"] == 1 and not r["updated"] and r["unchanged"]
    assert "2 steps in a row" in r["stopped"]


def test_bad_input_is_one_paragraph_and_exit_2(tmp_path, embedded_model):
    """What a user sees when a run cannot start: our one paragraph on stderr, no traceback, exit code 2.
    (Each kind of bad input is tested in-process in tests/test_config.py and tests/test_data.py.)"""
    f = tmp_path / "d.jsonl"
    f.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": "2+2"}\n')
    p = python(["-m", "lead_fast.train", "--preset", "tiny",
                "--model", embedded_model, "--data", str(f), "--output-dir", str(tmp_path / "o")])
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip() == f"lead_fast: cannot start: {f}: row 2 has no 'answer' field (fields: problem); set " \
                               "--data.answer_field if it has another name"
    p = python(["-m", "lead_fast.train", "--optim.learning_rate", "1e-5"])
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "unknown config key 'optim.learning_rate'" in p.stderr


def test_batch_not_divisible_across_ranks(tmp_path, embedded_model):
    p = torchrun(2, ["-m", "lead_fast.train", "--preset", "tiny",
                     "--model", embedded_model, "--optim.prompts_per_step", "5",
                     "--output-dir", str(tmp_path / "o")])
    assert p.returncode != 0
    assert "optim.prompts_per_step=5 must be divisible by the number of ranks (2)" in p.stderr


def test_sigterm_saves_and_resumes(embedded_model, tmp_path):
    """A preempted run (SIGTERM) finishes its step, saves, and --resume carries on from there."""
    import signal
    import time

    out = tmp_path / "term"
    cmd = [sys.executable, "-m", "lead_fast.train", *_args(embedded_model, out, "--max-steps", "50")[2:]]
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
    steps = [r["step"] for r in _rows(out)]
    saved = int(text.split("stopped by signal after step ")[1].split(";")[0])
    assert 2 <= saved < 50 and steps[-1] == saved
    assert (out / "checkpoints" / f"step-{saved:08d}").exists()
    p = torchrun(1, _args(embedded_model, out, "--max-steps", str(saved + 1), "--resume"))
    check(p)
    assert f"at step {saved}" in p.stdout and [r["step"] for r in _rows(out)][-1] == saved + 1


def test_help_lists_every_field():
    from lead_fast.cli import all_keys

    p = check(python(["-m", "lead_fast.train", "--help"]))
    for key in all_keys():
        assert f"--{key} " in p.stdout, key
    for flag in ("--preset", "--config", "--model", "--data", "--output-dir", "--max-steps", "--save-every",
                 "--eval-every", "--resume"):
        assert flag in p.stdout


def test_two_nodes_of_one_rank(embedded_model, tmp_path):
    """Two torchrun launchers (a node each, one rank each) meeting at a c10d rendezvous on localhost:
    two steps with a checkpoint, files written once, by global rank 0."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "multi"
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=lead_fast_test",
               *_args(embedded_model, out, "--max-steps", "2", "--save-every", "1")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                      env=env()))
    results = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stdout[-2000:] + stderr[-3000:]
    assert [r["step"] for r in _rows(out)] == [0, 1, 2]
    assert sum("2 rank(s)" in stdout for stdout, _ in results) == 1     # one node logs: global rank 0
    assert (out / "checkpoints" / "step-00000002" / "trainer_state.json").exists()
    shards = sorted(p.name for p in (out / "checkpoints" / "step-00000002").glob("*.distcp"))
    assert len(shards) == 2, shards                                       # both ranks wrote their shard


def test_tensorboard_and_wandb_offline(embedded_model, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tracked"
    p = check(python(["-m", "lead_fast.train", *_args(embedded_model, out, "--max-steps", "2",
                                                         "--run.report_to", '["tensorboard", "wandb"]')[2:]],
                     WANDB_MODE="offline", WANDB_SILENT="true"))
    assert "ETA" in p.stdout and "elapsed" in p.stdout
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "reward/mean", "eval/accuracy", "eval/pass@1", "time/step_s"} <= tags
    logged = [e.value for e in events.Scalars("eval/accuracy")]
    assert logged == pytest.approx([r["eval/accuracy"] for r in _rows(out) if r.get("eval/accuracy") is not None])
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
