"""Run under torchrun: ``lead_fast.train`` with a fault injected at one of the seams the trainer exposes
for it (functions that do nothing in a real run), so that no production module reads a test's variable.

argv: KIND N [train arguments]
  sigterm_in_batch N   a rollout rank sends itself SIGTERM with batch N half made (its first share done)
  kill_during_save N   rank 0 is SIGKILLed with step N's checkpoint shards written, the checkpoint incomplete
  kill_engine N R      the rollout engine runs in a process of its own (EngineProcess, as disaggregated vLLM
                       does); on rank R that process is SIGKILLed as the rank asks it for its Nth generate
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
    elif kind == "kill_engine":
        import lead_fast.build as seam
        from lead_fast.rollout.process import EngineProcess

        rank, args = int(args[0]), args[1:]
        make_engine, generate, calls = seam.make_engine, EngineProcess.generate, []
        seam.make_engine = lambda *a, **kw: make_engine(*a, **{**kw, "own_process": True})

        def killing_generate(self, prompts, settings):
            calls.append(1)
            if len(calls) == n and int(os.environ["RANK"]) == rank:
                os.kill(self._proc.pid, signal.SIGKILL)
            return generate(self, prompts, settings)

        EngineProcess.generate = killing_generate
    else:
        raise SystemExit(f"unknown fault {kind!r}")
    from lead_fast.train import main as train

    return train(args)


if __name__ == "__main__":
    code = main()
    from lead_fast.distributed import exit_process

    exit_process(code)
