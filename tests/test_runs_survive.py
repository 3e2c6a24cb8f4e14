"""Exact resume, atomic checkpoints under SIGKILL, export for serving, and clear errors on bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_trainer import DATA, ROOT, _check, torchrun

COMPARE = ("loss", "reward/mean", "accuracy", "response_length/mean", "grad_norm", "clip_frac", "entropy",
           "groups_dropped", "eval/accuracy", "eval/response_length")


@pytest.fixture(scope="module")
def embedded_model(tmp_path_factory):
    """The embedded task's model after a short warm start (built once, passed with --model)."""
    from lead_fast.warmstart import build_embedded_model

    d = tmp_path_factory.mktemp("embedded") / "base_model"
    build_embedded_model(str(d), steps=150, seed=0, log=lambda m: None)
    return str(d)


def _args(model, out, *extra):
    # the default (tiny) preset with fewer prompts per step and a smaller eval
    return ["-m", "lead_fast.train", "--model", model, "--output-dir", str(out), "--optim.prompts_per_step", "8",
            "--eval-every", "2", "--data.eval_size", "8", "--rollout.eval_n", "1", *extra]


def _rows(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_resume_is_exact(embedded_model, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    _check(torchrun(2, _args(embedded_model, full, "--max-steps", "4", "--save-every", "2")))
    _check(torchrun(2, _args(embedded_model, part, "--max-steps", "2", "--save-every", "2")))
    p = torchrun(2, _args(embedded_model, part, "--max-steps", "4", "--save-every", "2", "--resume"))
    _check(p)
    assert "resumed from" in p.stdout
    a, b = _rows(full), _rows(part)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2, 3, 4]
    for ra, rb in zip(a[3:], b[3:]):
        for k in COMPARE:
            assert ra.get(k) == rb.get(k), (ra["step"], k, ra.get(k), rb.get(k))
    assert a[3]["loss"] is not None  # the compared steps did update


def test_resume_with_other_world_size(embedded_model, tmp_path):
    out = tmp_path / "ws"
    _check(torchrun(2, _args(embedded_model, out, "--max-steps", "2", "--save-every", "2")))
    p = torchrun(1, _args(embedded_model, out, "--max-steps", "3", "--resume"))
    _check(p)
    assert "resumed from" in p.stdout and [r["step"] for r in _rows(out)] == [0, 1, 2, 3]


def test_sigkill_during_save_leaves_previous_checkpoint(embedded_model, tmp_path):
    out = tmp_path / "kill"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *_args(embedded_model, out, "--max-steps", "4", "--save-every", "1", "--run.keep_last", "5")]
    env = dict(os.environ, OMP_NUM_THREADS="1", LEAD_FAST_KILL_DURING_SAVE="3")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert p.returncode != 0
    ck = out / "checkpoints"
    names = sorted(os.listdir(ck))
    assert "step-00000002" in names and "step-00000003" not in names, names
    assert any(n.startswith(".tmp-step-00000003") for n in names), names  # the half-written one
    p = torchrun(2, _args(embedded_model, out, "--max-steps", "4", "--save-every", "1", "--resume"))
    _check(p)
    assert "resumed from" in p.stdout and "step-00000002" in p.stdout
    assert [r["step"] for r in _rows(out)] == [0, 1, 2, 3, 4]
    assert (ck / "step-00000004").exists() and not (ck / ".tmp-step-00000003").exists()


def test_export_generates_like_the_trained_model(embedded_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "exp"
    res = tmp_path / "greedy.json"
    _check(torchrun(2, [str(ROOT / "tests/helpers/train_then_greedy.py"), str(res),
                        *_args(embedded_model, out, "--max-steps", "2")[2:]]))
    p = subprocess.run([sys.executable, "-m", "lead_fast.export", "--output-dir", str(out), "--out", str(tmp_path / "hf")],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
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
    _check(torchrun(2, [str(ROOT / "tests/helpers/nonfinite_update.py"), embedded_model, str(res)]))
    r = json.loads(res.read_text())
    assert r["skipped"] == 1 and not r["updated"] and r["unchanged"]
    assert "2 steps in a row" in r["stopped"]


# -------------------------------------------------------------------------------------------------
# Bad input: one paragraph, names what is wrong, non-zero exit before training starts.


def _train(*args, nproc=1):
    """Exit code and stderr of a run that must refuse to start. One process runs without torchrun, so
    stderr is exactly what a user sees: our paragraph, no traceback."""
    if nproc == 1:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        p = subprocess.run([sys.executable, "-m", "lead_fast.train", *args], capture_output=True, text=True,
                           timeout=300, cwd=ROOT, env=env)
        assert "Traceback" not in p.stderr, p.stderr
    else:
        p = torchrun(nproc, ["-m", "lead_fast.train", *args])
    assert p.returncode != 0
    assert "lead_fast: " in p.stderr
    return p.stderr


def test_data_row_without_answer(tmp_path, embedded_model):
    f = tmp_path / "d.jsonl"
    f.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": "2+2"}\n')
    err = _train("--model", embedded_model, "--data", str(f), "--output-dir", str(tmp_path / "o"))
    assert f"{f}: row 2 has no 'answer' field" in err


def test_empty_and_unreadable_data(tmp_path, embedded_model):
    empty = tmp_path / "e.json"
    empty.write_text("")
    assert "is empty" in _train("--model", embedded_model, "--data", str(empty), "--output-dir", str(tmp_path / "o"))
    bad = tmp_path / "b.json"
    bad.write_text("[{\"problem\": ")
    assert "is not valid JSON" in _train("--model", embedded_model, "--data", str(bad), "--output-dir", str(tmp_path / "o"))
    assert "does not exist" in _train("--model", embedded_model, "--data", str(tmp_path / "nope.json"),
                                      "--output-dir", str(tmp_path / "o"))


def test_model_dir_missing_or_without_tokenizer(tmp_path, embedded_model):
    err = _train("--model", str(tmp_path / "nomodel"), "--data", str(DATA), "--output-dir", str(tmp_path / "o"))
    assert f"model directory {tmp_path / 'nomodel'} does not exist" in err
    notok = tmp_path / "notok"
    notok.mkdir()
    (notok / "config.json").write_text((Path(embedded_model) / "config.json").read_text())
    err = _train("--model", str(notok), "--data", str(DATA), "--output-dir", str(tmp_path / "o"))
    assert "has no tokenizer" in err


def test_unknown_config_key_suggests(tmp_path):
    err = _train("--optim.learning_rate", "1e-5", "--output-dir", str(tmp_path / "o"))
    assert "unknown config key 'optim.learning_rate'" in err
    err = _train("--max-step", "3", "--output-dir", str(tmp_path / "o"))
    assert "did you mean '--max-steps'" in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("optim:\n  lrr: 0.1\n")
    err = _train("--config", str(cfg), "--output-dir", str(tmp_path / "o"))
    assert "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)" in err


def test_prompts_too_long(tmp_path, embedded_model):
    err = _train("--model", embedded_model, "--data", str(DATA), "--data.max_prompt_tokens", "3",
                 "--output-dir", str(tmp_path / "o"))
    assert "longer than data.max_prompt_tokens=3" in err and "raise the limit" in err


def test_batch_not_divisible_across_ranks(tmp_path, embedded_model):
    err = _train("--model", embedded_model, "--optim.prompts_per_step", "5", "--output-dir", str(tmp_path / "o"),
                 nproc=2)
    assert "optim.prompts_per_step=5 must be divisible by the number of ranks (2)" in err


def test_sigterm_saves_and_resumes(embedded_model, tmp_path):
    """A preempted run (SIGTERM) finishes its step, saves, and --resume carries on from there."""
    import signal
    import time

    out = tmp_path / "term"
    cmd = [sys.executable, "-m", "lead_fast.train", *_args(embedded_model, out, "--max-steps", "50")[2:]]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
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
    _check(p)
    assert f"at step {saved}" in p.stdout and [r["step"] for r in _rows(out)][-1] == saved + 1


def test_help_lists_every_field():
    from lead_fast.config import all_keys

    p = subprocess.run([sys.executable, "-m", "lead_fast.train", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0
    for key in all_keys():
        assert f"--{key} " in p.stdout, key
    for flag in ("--preset", "--config", "--model", "--data", "--output-dir", "--max-steps", "--save-every",
                 "--eval-every", "--resume"):
        assert flag in p.stdout
