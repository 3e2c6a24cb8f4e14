"""lead_fast.eval, the command end to end on the embedded model with its task: samples and summary,
resume, two ranks, bad input, progress output."""

import json

import pytest

from lead_fast.eval import main
from tests.helpers.launch import DATA_DIR, check, python, torchrun


def _eval(model, data, out, *extra, n_flag="--n"):
    return ["-m", "lead_fast.eval", "--model", model, "--data", data, "--output-dir",
            str(out), n_flag, "2", "--max-new-tokens", "8", "--temperature", "1.0", "--batch-problems", "2", *extra]


def _samples(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_command_writes_samples_and_summary_and_resumes(embedded_model, arith_data, tmp_path):
    out = tmp_path / "ev"
    p = check(python(_eval(embedded_model, arith_data, out, "--limit", "3", "--min-p", "0.01")))
    rows = _samples(out)
    assert len(rows) == 6 and sorted({r["problem_id"] for r in rows}) == [0, 1, 2]
    assert set(rows[0]) >= {"problem_id", "sample", "text", "answer", "outcome", "length", "finish_reason"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == 3 and summary["samples_per_problem"] == 2
    # every value from the samples: pass@1 the mean of c/n; pass@2 with n=2, any correct; cons@2 the vote,
    # which with two samples is the first sample that has an answer (a tie goes to the first)
    by = {i: sorted((r for r in rows if r["problem_id"] == i), key=lambda r: r["sample"]) for i in range(3)}
    correct = {i: [r["outcome"] == 1 for r in s] for i, s in by.items()}
    voted = {i: next((r["outcome"] == 1 for r in s if r["answer"] is not None), False) for i, s in by.items()}
    assert summary["pass@1"] == pytest.approx(sum(sum(c) / 2 for c in correct.values()) / 3)
    assert summary["pass@2"] == pytest.approx(sum(any(c) for c in correct.values()) / 3)
    assert summary["cons@2"] == pytest.approx(sum(voted.values()) / 3)
    assert summary["truncated_frac"] == pytest.approx(sum(r["finish_reason"] == "length" for r in rows) / 6)
    assert summary["response_length/mean"] == pytest.approx(sum(r["length"] for r in rows) / 6)
    assert "| pass@1 |" in p.stdout
    # the same command again: nothing new; a larger --limit adds only the new problems
    p = check(python(_eval(embedded_model, arith_data, out, "--limit", "3", "--min-p", "0.01")))
    assert "skipping 3 problems already" in p.stdout and len(_samples(out)) == 6
    check(python(_eval(embedded_model, arith_data, out, "--limit", "5", "--min-p", "0.01")))
    assert len(_samples(out)) == 10 and json.loads((out / "summary.json").read_text())["problems"] == 5
    # other settings in the same directory are refused
    p = python(_eval(embedded_model, arith_data, out, "--limit", "5", "--min-p", "0.01", "--seed", "9"))
    assert p.returncode == 2 and "holds an evaluation with other settings (seed)" in p.stderr


def test_two_ranks_split_the_problems(embedded_model, arith_data, tmp_path):
    out = tmp_path / "ev2"
    check(torchrun(2, _eval(embedded_model, arith_data, out, "--limit", "5", n_flag="--num-samples")))
    rows = _samples(out)
    assert sorted({r["problem_id"] for r in rows}) == [0, 1, 2, 3, 4] and len(rows) == 10
    assert json.loads((out / "summary.json").read_text())["problems"] == 5


def test_bad_input_is_one_paragraph_before_generation(embedded_model, arith_data, tmp_path, capsys):
    base = ["--data", str(DATA_DIR / "aime24.json"), "--output-dir", str(tmp_path / "o")]
    assert main(["--model", str(tmp_path / "none"), *base]) == 2
    assert f"model directory {tmp_path / 'none'} does not exist" in capsys.readouterr().err
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"problem": "1+1"}\n')
    assert main(["--model", embedded_model, "--data", str(bad), "--output-dir", str(tmp_path / "o")]) == 2
    assert f"{bad}: row 1 has no 'answer' field" in capsys.readouterr().err
    assert main(["--model", embedded_model, *base, "--n", "0"]) == 2
    assert "--n must be >= 1" in capsys.readouterr().err
    assert main(["--model", embedded_model, *base, "--n", "2", "--k", "1,4"]) == 2
    assert "every --k must lie in [1, n=2]" in capsys.readouterr().err
    # AIME prompts (hundreds of tokens in this model's tokenizer) + 64 new tokens exceed its 256 positions
    assert main(["--model", embedded_model, *base, "--max-new-tokens", "64"]) == 2
    err = capsys.readouterr().err
    assert "exceeds the model's context of 256 positions" in err and "--max-new-tokens" in err
    assert not (tmp_path / "o" / "samples.jsonl").exists()


def test_progress_is_a_bar_on_a_terminal_and_lines_in_logs(embedded_model, arith_data, tmp_path):
    """On a terminal (a pseudo-terminal here) a tqdm bar with ETA; piped, plain progress lines."""
    import os
    import pty
    import subprocess
    import sys

    from tests.helpers.launch import ROOT, env

    args = [sys.executable, *_eval(embedded_model, arith_data, tmp_path / "tty", "--limit", "2")]
    import fcntl
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # a terminal 100 wide
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=follower, cwd=ROOT, env=env(), text=True)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:          # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    p.wait(timeout=300)
    os.close(leader)
    assert p.returncode == 0, seen.decode(errors="replace")[-3000:]
    assert b"eval: 100%" in seen and b"2/2" in seen                     # tqdm's bar, drawn on the terminal
    piped = check(python(_eval(embedded_model, arith_data, tmp_path / "log", "--limit", "2")))
    assert "eval: 2/2 problems, ETA" in piped.stdout and "eval: 100%" not in piped.stderr
