"""grade_batch's worker pool: hard deadlines, timeouts reported by its own API, any kind of caller."""

import subprocess
import sys
import time

import pytest

from lead_fast.algo import grade, grade_batch
from tests.helpers.launch import ROOT, env


def test_grade_batch_matches_grade(train_data):
    import random

    sample = random.Random(0).sample(train_data, 40)
    resp, ans = [], []
    for i, row in enumerate(sample):
        a = row["answer"].strip().strip("$")
        resp.append([f"\\boxed{{{a}}}", "\\boxed{99999}", "no answer", "ha " * 50][i % 4])
        ans.append(row["answer"])
    got = grade_batch(resp, ans)
    assert got == [grade(r, a) for r, a in zip(resp, ans)]
    assert got[:4] == [1, 0, -1, -2]


def test_hostile_latex_costs_at_most_its_timeout_and_is_counted():
    hostile = [
        "\\boxed{" + "{" * 3000 + "1" + "}" * 3000 + "}",          # deep nesting
        "\\boxed{9^{9^{9^{9^{9^{9^{9^{9}}}}}}}}",                   # a tower of exponents
        "\\boxed{" + "\\sqrt{" * 400 + "2" + "}" * 400 + "}",
        "\\boxed{(10^{10^{10}})!}",
    ]
    good = ["\\boxed{4}"] * 4
    t0 = time.monotonic()
    out, timeouts = grade_batch(hostile + good, ["1"] * 4 + ["4"] * 4, timeout_s=2.0, num_workers=2,
                                return_timeouts=True)
    took = time.monotonic() - t0
    assert out[4:] == [1, 1, 1, 1]
    assert all(o in (0, -1) for o in out[:4])
    assert 1 <= timeouts <= 4 and out.count(0) >= timeouts
    # 4 hostile items on 2 workers: two rounds of at most 2 s each, plus worker restarts.
    assert took < 30, took
    assert grade_batch(good, ["4"] * 4, return_timeouts=True) == ([1, 1, 1, 1], 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="2 responses but 1 answers"):
        grade_batch(["a", "b"], ["1"])
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout_s must be a finite number > 0"):
            grade_batch(["a"], ["1"], timeout_s=bad)
    assert grade_batch([], []) == []
    assert grade_batch([], [], return_timeouts=True) == ([], 0)


SCRIPT = ("from lead_fast.algo import grade_batch\n"
          "print(grade_batch(['\\\\boxed{2}', 'no box', '\\\\boxed{3}'], ['2', '2', '2'], num_workers=2))\n")


@pytest.mark.parametrize("how", ["stdin", "-c"])
def test_works_from_stdin_scripts_and_python_c(how, tmp_path):
    """Workers must not re-import the caller's __main__ (``<stdin>`` or ``-c`` has no file to import)."""
    args, stdin = ([sys.executable, "-"], SCRIPT) if how == "stdin" else ([sys.executable, "-c", SCRIPT], None)
    t0 = time.monotonic()
    p = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env())
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[1, -1, 0]"
    assert time.monotonic() - t0 < 60


def test_start_up_failure_names_its_cause(tmp_path):
    """A worker that cannot import math-verify says why, at once (not after a long wait)."""
    (tmp_path / "math_verify").mkdir()
    (tmp_path / "math_verify" / "__init__.py").write_text("raise ImportError('math_verify is broken here')\n")
    code = ("from lead_fast.algo import grade_batch\n"
            "try:\n    grade_batch(['x'], ['1'], num_workers=1)\n"
            "except RuntimeError as e:\n    print('ERR', e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env=env(PYTHONPATH=str(tmp_path)))
    assert "ERR a grading worker could not start" in p.stdout, p.stdout + p.stderr
    assert "math_verify is broken here" in p.stdout
