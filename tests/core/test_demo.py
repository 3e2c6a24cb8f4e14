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
    deadline, seen = time.time() + 600, ""
    for line in proc.stdout:
        seen += line
        if "[warm start] step 1/" in line or time.time() > deadline:
            break
    assert "[warm start] step 1/" in seen, seen[-3000:]     # interrupted in the warm start, not before it
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "lead_fast: interrupted before training started" in err, err
    assert not out.exists()        # nothing half-built, and no empty run folder
