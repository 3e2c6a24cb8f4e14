"""``lead-fast``, the launcher README shows, on 2 ranks: bad input is one paragraph and exit code 2 (before any
process starts when the config says so, from the ranks otherwise), Ctrl-C during training saves and exits
130 with one line, Ctrl-C during the warm start exits 130 with one line and leaves no folder, and a rank
killed by a signal is said by the launcher."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lead_fast.checkpoint import list_checkpoints
from tests.helpers.launch import ROOT, env
from tests.helpers.runs import RUN, rows

LEAD_FAST = str(Path(sys.executable).parent / "lead-fast")    # the console script pip installs with the package


def _launch(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([LEAD_FAST, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env())


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([LEAD_FAST, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=env())


def _interrupt_after(proc: subprocess.Popen, marker: str, timeout=300) -> tuple[str, str]:
    """Ctrl-C (SIGINT to the launcher, as a terminal sends it) once ``marker`` is printed; the rest of the output."""
    deadline, seen = time.time() + timeout, []
    for line in proc.stdout:
        seen.append(line)
        if marker in line or time.time() > deadline:
            break
    assert marker in "".join(seen), "".join(seen)[-3000:]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    return "".join(seen) + out, err


def _one_paragraph(err: str) -> str:
    assert "Traceback" not in err and "ChildFailedError" not in err and "SignalException" not in err, err
    ours = [line for line in err.splitlines() if line.startswith("lead_fast: ")]
    assert len(ours) == 1, err
    return ours[0]


def test_bad_input_is_one_paragraph_and_exit_2(embedded_model, tmp_path):
    # the config's own checks, the ranks' split included, before any process starts
    for args, says in ((["--optim.lrr", "1"], "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
                       (["--nproc", "3"], "optim.prompts_per_step=16 must be divisible by the number of ranks (3)"),
                       (["--nproc", "0"], "--nproc 0: start at least 1 rank")):
        p = _launch(*args, "--output-dir", str(tmp_path / "o"))
        assert p.returncode == 2 and says in _one_paragraph(p.stderr), p.stderr
        assert not (tmp_path / "o").exists()
    # what only the ranks can find (the data file): their paragraph and code, nothing from torch's launcher,
    # and no empty output folder left behind
    out = tmp_path / "run"
    p = _launch("--nproc", "2", "--model", embedded_model, "--data", str(tmp_path / "none.json"),
                "--output-dir", str(out))
    assert p.returncode == 2, p.stderr
    assert _one_paragraph(p.stderr) == f"lead_fast: cannot start: data file {tmp_path / 'none.json'} does not exist"
    assert not out.exists()


def test_help_names_the_launcher():
    p = _launch("--help")
    assert p.returncode == 0 and p.stdout.startswith("usage: lead-fast [--nproc N]"), p.stdout[:300]


def test_ctrl_c_during_training_saves_and_exits_130(embedded_model, tmp_path):
    out = tmp_path / "run"
    args = ["--nproc", "2", "--preset", "tiny", "--model", embedded_model, "--output-dir", str(out), *RUN,
            "--max-steps", "200", "--save-every", "1000"]
    stdout, err = _interrupt_after(_start(*args), "step 2 |")
    assert "Traceback" not in err and "SignalException" not in err, err
    stopped = [line for line in stdout.splitlines() if line.startswith("stopped by signal after step")]
    assert len(stopped) == 1 and stopped[0].endswith("continue with --resume"), stdout[-2000:]
    step = int(stopped[0].split()[5].rstrip(";"))
    assert [s for s, _ in list_checkpoints(str(out))] == [step]        # saved at the stop, not by --save-every
    assert rows(out)[-1]["step"] == step
    p = _launch(*args[:-4], "--max-steps", str(step + 1), "--resume")
    assert p.returncode == 0 and "resumed from" in p.stdout, p.stderr[-3000:]
    assert [r["step"] for r in rows(out)] == list(range(1, step + 2))


def test_ctrl_c_during_the_warm_start_exits_130_and_leaves_nothing(tmp_path):
    out = tmp_path / "demo"
    proc = _start("--nproc", "2", "--output-dir", str(out), "--run.warm_start_steps", "100000")
    _, err = _interrupt_after(proc, "[warm start] step 1/")
    assert proc.returncode == 130, err
    assert "interrupted before training started" in _one_paragraph(err)
    assert not out.exists()


def test_a_rank_killed_by_a_signal_is_said(embedded_model, tmp_path):
    out = tmp_path / "run"
    proc = _start("--nproc", "2", "--preset", "tiny", "--model", embedded_model, "--output-dir", str(out), *RUN,
                  "--max-steps", "200")
    for line in proc.stdout:
        if "step 1 |" in line:
            break
    ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert ranks, "the launcher's ranks"
    os.kill(int(ranks[-1]), signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "was killed by SIGKILL (most often the out-of-memory killer)" in err, err[-3000:]
    assert "ChildFailedError" not in err, err[-3000:]
