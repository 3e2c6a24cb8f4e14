"""The output directory: another run's is refused (and --run.overwrite clears it), unwritable ones are named."""

import subprocess

from lead_fast.checkpoint import list_checkpoints
from tests.helpers.launch import check
from tests.helpers.runs import copy_run, mount_tmpfs, refused, rows, train


def test_second_run_into_the_same_directory_is_refused(three_steps, embedded_model, tmp_path):
    out = copy_run(three_steps, tmp_path)
    before = (out / "metrics.jsonl").read_text(), (out / "config.yaml").read_text()
    msg = refused(train(embedded_model, out, "--max-steps", "1"))
    assert f"output directory {out} already holds a run" in msg
    assert "checkpoints of steps 1..3" in msg and "--resume" in msg and "--run.overwrite" in msg
    assert ((out / "metrics.jsonl").read_text(), (out / "config.yaml").read_text()) == before
    assert [s for s, _ in list_checkpoints(str(out))] == [1, 2, 3]
    # --run.overwrite deletes the old run explicitly, and the new run's checkpoint survives its own pruning
    check(train(embedded_model, out, "--max-steps", "1", "--run.overwrite", "true"))
    assert [r["step"] for r in rows(out)] == [1]
    assert [s for s, _ in list_checkpoints(str(out))] == [1]


def test_read_only_output_dir(embedded_model, tmp_path):
    mnt = tmp_path / "ro"
    mount_tmpfs(mnt, 2**20, "ro")
    try:
        msg = refused(train(embedded_model, mnt / "run", "--max-steps", "1"))
        assert f"cannot write to output directory {mnt / 'run'}: it is not writable" in msg
    finally:
        subprocess.run(["umount", str(mnt)])


def test_impossible_output_dirs(embedded_model, tmp_path):
    """No mount needed: this half runs wherever the read-only half above cannot."""
    f = tmp_path / "a_file"
    f.write_text("x")
    msg = refused(train(embedded_model, f / "run", "--max-steps", "1"))
    assert "a part of the path is a file, not a directory" in msg
    assert "is a file" in refused(train(embedded_model, f, "--max-steps", "1"))
