"""Warm starts: Ctrl-C while one runs, progress lines with the time left, and the cache that lets a later
run (another output directory) copy a finished one instead of building it again."""

import filecmp
import re
import signal
import subprocess
import sys
import time

from lead_fast.warm_start import build_embedded_model
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


def test_a_warm_start_is_built_once_then_copied_from_the_cache(tmp_path):
    cache, said = tmp_path / "cache", []
    a = build_embedded_model(str(tmp_path / "a" / "base_model"), steps=3, seed=0, cache=str(cache), log=said.append)
    assert [m for m in said if re.fullmatch(r"\[warm start\] step \d/3 loss [\d.]+ \(\d+ s, ~\d+ s left\)", m)], said
    assert any(m.startswith("[warm start] built ") for m in said) and any("kept in the cache" in m for m in said)
    (kept,) = cache.iterdir()

    said.clear()
    b = build_embedded_model(str(tmp_path / "b" / "base_model"), steps=3, seed=0, cache=str(cache), log=said.append)
    assert said == [f"[warm start] copied from the cache {kept} (--run.warm_start_cache off builds it anew)"]
    names = sorted(p.name for p in (tmp_path / "a" / "base_model").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b" / "base_model").iterdir()) and "model.safetensors" in names
    match, _, _ = filecmp.cmpfiles(a, b, names, shallow=False)
    assert sorted(match) == names                                                # every file equal

    said.clear()         # another seed is another warm start: built, and kept beside the first
    build_embedded_model(str(tmp_path / "c" / "base_model"), steps=3, seed=1, cache=str(cache), log=said.append)
    assert any(m.startswith("[warm start] built ") for m in said) and len(list(cache.iterdir())) == 2
