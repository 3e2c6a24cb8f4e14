"""Two nodes of one rank each (torchrun's rendezvous, gloo across them) train like one node of two."""

import subprocess
import sys

from tests.helpers.launch import ROOT, env
from tests.helpers.runs import rows, tiny_args


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
               *tiny_args(embedded_model, out, "--max-steps", "2", "--save-every", "1")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                      env=env()))
    results = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stdout[-2000:] + stderr[-3000:]
    assert [r["step"] for r in rows(out)] == [0, 1, 2]
    assert sum("2 rank(s)" in stdout for stdout, _ in results) == 1     # one node logs: global rank 0
    assert (out / "checkpoints" / "step-00000002" / "trainer_state.json").exists()
    shards = sorted(p.name for p in (out / "checkpoints" / "step-00000002").glob("*.distcp"))
    assert len(shards) == 2, shards                                       # both ranks wrote their shard
