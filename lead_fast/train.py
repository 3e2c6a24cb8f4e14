"""Entry point: ``torchrun --nproc_per_node=N -m lead_fast.train [--preset P] [--config F] [overrides]``.

Parses the config, builds the trainer, runs it. Bad input ends here with a one-paragraph error and a
non-zero exit, before any training starts.
"""

from __future__ import annotations

import os
import sys


def _error(msg: str) -> None:
    # Input errors are the same on every rank: say it once.
    if os.environ.get("RANK", "0") == "0":
        print(f"lead_fast: {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    from lead_fast.config import ConfigError, parse_args

    try:
        cfg = parse_args(argv)
    except ConfigError as e:
        _error(f"config error: {e}")
        return 2

    import torch.distributed as dist

    from lead_fast.checkpoint import CheckpointError
    from lead_fast.data import DataError
    from lead_fast.algo.grading_pool import GradingStartError
    from lead_fast.model import ModelError
    from lead_fast.pretrained import PretrainedError
    from lead_fast.run_dir import OutputDirError
    from lead_fast.trainer import Trainer
    from lead_fast.update import NonFiniteError

    def done(code: int) -> int:
        if dist.is_initialized():
            dist.destroy_process_group()
        return code

    try:
        trainer = Trainer(cfg)
    except (ConfigError, DataError, ModelError, OutputDirError, CheckpointError, PretrainedError,
            GradingStartError) as e:
        _error(f"cannot start: {e}")
        return done(2)
    except KeyboardInterrupt:
        _error("interrupted before training started; nothing was saved (a half-built model directory is removed)")
        return 130
    try:
        trainer.fit()
    except (NonFiniteError, CheckpointError, GradingStartError) as e:
        _error(f"stopped: {e}")
        return done(1)
    finally:
        trainer.close()
    return done(0)


if __name__ == "__main__":
    sys.exit(main())
