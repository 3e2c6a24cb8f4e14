"""``lead-fast``: lead_fast's own launcher. ``lead-fast --nproc N [training options]``.

It checks the whole config (and that each step's prompts split over the N ranks) before any process
starts, then starts the ranks of ``lead_fast.train`` on this node through torch's elastic launch API (what
``torchrun --standalone`` runs), and ends as README says: bad input is one paragraph and exit code 2, an
error in training is the ranks' paragraph and their exit code, Ctrl-C lets the ranks finish their step
and save, then exits 130. torchrun itself stays supported; it adds its own report (``ChildFailedError``,
``SignalException``) to any of these.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import uuid

from lead_fast.cli import parse_args
from lead_fast.config import check_world
from lead_fast.errors import ConfigError

PROG = "lead-fast [--nproc N]"
# A rank that was asked to stop finishes its step and saves before it exits; the launcher waits that long
# before it kills what is left (torchrun's default, 30 s, is shorter than one step of a large model).
SHUTDOWN_TIMEOUT_S = 1800


def _say(msg: str) -> None:
    print(f"lead_fast: {msg}", file=sys.stderr, flush=True)


def _own_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    ap = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    ap.add_argument("--nproc", type=int, default=1)
    return ap.parse_known_args(argv)


def _failed_code(error) -> int:
    """The exit code to end with: the first rank to fail decides (the others' failures follow from it). A
    rank killed by a signal printed nothing, so it is said here; a rank that exited printed its paragraph."""
    # the agent stops the surviving ranks with SIGTERM: a rank killed by anything else is the cause
    killed = sorted(r for r, f in error.failures.items()
                    if f.exitcode < 0 and -f.exitcode not in (signal.SIGTERM, signal.SIGINT))
    rank = killed[0] if killed else error.get_first_failure()[0]
    failure = error.failures[rank]
    if failure.exitcode >= 0:
        return failure.exitcode
    sig = -failure.exitcode
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
    hint = " (most often the out-of-memory killer)" if sig == signal.SIGKILL else ""
    _say(f"rank {rank} was killed by {name}{hint}; --resume continues from the last checkpoint")
    return 128 + sig


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        own, rest = _own_args(argv)
    except SystemExit:                   # argparse's own message (e.g. --nproc x) is already printed
        return 2
    try:
        cfg = parse_args(rest, prog=PROG)   # --help prints and exits 0 here
        if own.nproc < 1:
            raise ConfigError(f"--nproc {own.nproc}: start at least 1 rank")
        check_world(cfg, own.nproc)
    except ConfigError as e:
        _say(f"config error: {e}")
        return e.exit_code

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # The ranks say what went wrong in one paragraph; the agent's own log lines would bury it.
    for name in ["torch.distributed.elastic", *logging.root.manager.loggerDict]:
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    if own.nproc > 1 and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = "1"     # as torchrun does: one thread a rank unless told otherwise
    os.environ["LEAD_FAST_LAUNCHER"] = "1"      # the ranks' --help and messages name this command
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=own.nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
                          shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "lead_fast.train", *rest)
    except ChildFailedError as e:
        return _failed_code(e)
    except SignalException as e:         # the ranks got the signal, finished their step and saved
        return 130 if e.sigval == signal.SIGINT else 0     # SIGTERM (preemption): a clean stop, as without us
    return 0


if __name__ == "__main__":
    sys.exit(main())
