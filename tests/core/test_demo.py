"""The embedded task's warm start: Ctrl-C while it runs."""

import signal
import subprocess
import sys
import time

from tests.helpers.launch import ROOT, env


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
