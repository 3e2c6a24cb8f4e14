"""The command line as a user meets it: bad input as one paragraph and exit code 2, --help, relative paths."""

import json
import shutil
import subprocess
import sys

from tests.helpers.launch import check, env, python, torchrun
from tests.helpers.runs import RUN


def test_bad_input_is_one_paragraph_and_exit_2(tmp_path, embedded_model):
    """What a user sees when a run cannot start: our one paragraph on stderr, no traceback, exit code 2.
    (Each kind of bad input is tested in-process in tests/core/test_config.py and tests/core/test_data.py.)"""
    f = tmp_path / "d.jsonl"
    f.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": "2+2"}\n')
    p = python(["-m", "lead_fast.train", "--preset", "tiny",
                "--model", embedded_model, "--data", str(f), "--output-dir", str(tmp_path / "o")])
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip() == f"lead_fast: cannot start: {f}: row 2 has no 'answer' field (fields: problem); set " \
                               "--data.answer_field if it has another name (math-verify grades against it, in the " \
                               "math reward and the eval; without answers, score with your own reward functions, " \
                               "--algo.reward_funcs, and --run.eval_every 0)"
    p = python(["-m", "lead_fast.train", "--optim.learning_rate", "1e-5"])
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "unknown config key 'optim.learning_rate'" in p.stderr


def test_batch_not_divisible_across_ranks(tmp_path, embedded_model):
    p = torchrun(2, ["-m", "lead_fast.train", "--preset", "tiny",
                     "--model", embedded_model, "--optim.prompts_per_step", "5",
                     "--output-dir", str(tmp_path / "o")])
    assert p.returncode != 0
    assert "optim.prompts_per_step=5 must be divisible by the number of ranks (2)" in p.stderr


def test_help_lists_every_field():
    from lead_fast.cli import all_keys

    p = check(python(["-m", "lead_fast.train", "--help"]))
    for key in all_keys():
        assert f"--{key} " in p.stdout, key
    for flag in ("--preset", "--config", "--model", "--data", "--output-dir", "--max-steps", "--save-every",
                 "--eval-every", "--resume"):
        assert flag in p.stdout


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
