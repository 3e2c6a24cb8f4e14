"""Entry point: ``torchrun --nproc_per_node=N -m lead_fast.train [--preset P] [--config F] [overrides]``.

Parses the config, builds the trainer, runs it. Bad input ends here with a one-paragraph error and a
non-zero exit, before any training starts.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys

from lead_fast.cli import parse_args
from lead_fast.errors import ConfigError, LeadFastError


def _error(msg: str, speaker: int = 0) -> None:
    # Input errors are the same on every rank: say it once.
    if os.environ.get("RANK", "0") == str(speaker):
        print(f"lead_fast: {msg}", file=sys.stderr, flush=True)


def _leave_together() -> None:
    """Wait (at most 30 s) until every rank is here, so rank 0 has said why before any rank exits: a launcher
    stops the other ranks as soon as one exits with an error, and rank 0's paragraph would be lost."""
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.barrier(async_op=True).wait(timeout=datetime.timedelta(seconds=30))
        except Exception:       # noqa: BLE001  (a rank that is not coming: leave anyway)
            pass


def _interrupted() -> int:
    _error("interrupted before training started; nothing was saved (a half-built model directory is removed)")
    return 130


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
    except ConfigError as e:
        _error(f"config error: {e}")
        return e.exit_code

    # the trainer's imports (transformers, the engines) only once the config is good
    import torch.distributed as dist

    from lead_fast import run_dir
    from lead_fast.trainer import Trainer

    def done(code: int) -> int:
        if dist.is_initialized():
            dist.destroy_process_group()
        return code

    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    out = cfg.run.output_dir
    new_dir = not os.path.exists(out)   # a start that fails before writing anything leaves no folder behind

    def not_started(code: int) -> int:
        if new_dir and os.environ.get("RANK", "0") == "0":
            run_dir.remove_if_unused(out)
        return code

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        trainer = Trainer(cfg)
    except LeadFastError as e:
        _error(f"cannot start: {e}")
        return not_started(done(e.exit_code))
    except Exception:
        if not interrupted:
            raise
        # Ctrl-C reached every rank; one waiting in a collective sees its peer leave (gloo: "Connection reset by
        # peer") before its own KeyboardInterrupt: the same interruption, said once by rank 0
        return not_started(_interrupted())
    except KeyboardInterrupt:
        return not_started(_interrupted())
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        trainer.fit()
    except LeadFastError as e:          # training began: whatever stops it now is not bad input
        # said by the lead trainer (rank 0 when colocated; disaggregated, rollout ranks come first)
        _error(f"stopped: {e}", speaker=cfg.rollout.ranks if cfg.rollout.mode == "disaggregated" else 0)
        _leave_together()
        return done(1)
    finally:
        trainer.close()
    return done(0)


if __name__ == "__main__":
    code = main()
    if "torch.distributed" in sys.modules:    # collectives ran: leave as lead_fast.distributed.exit_process says
        from lead_fast.distributed import exit_process

        exit_process(code)
    sys.exit(code)
