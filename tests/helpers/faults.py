"""Run under torchrun: ``lead_fast.train`` with a fault injected at one of the seams the trainer exposes
for it (functions that do nothing in a real run), so that no production module reads a test's variable.

argv: KIND N [train arguments]
  sigterm_in_batch N   a rollout rank sends itself SIGTERM with batch N half made (its first share done)
  kill_during_save N   rank 0 is SIGKILLed with step N's checkpoint shards written, the checkpoint incomplete
"""

import os
import signal
import sys


def main() -> int:
    kind, n, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    if kind == "sigterm_in_batch":
        import lead_fast.disaggregated as seam

        seam.after_share = lambda batch, share: (batch, share) == (n, 0) and os.kill(os.getpid(), signal.SIGTERM)
    elif kind == "kill_during_save":
        import lead_fast.checkpoint as seam

        seam.after_shards_written = lambda step, rank: (step, rank) == (n, 0) and os.kill(os.getpid(), signal.SIGKILL)
    else:
        raise SystemExit(f"unknown fault {kind!r}")
    from lead_fast.train import main as train

    return train(args)


if __name__ == "__main__":
    code = main()
    from lead_fast.distributed import exit_process

    exit_process(code)
