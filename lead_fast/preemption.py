"""Preemption: SIGTERM / SIGINT become a request to stop after the current step, agreed across ranks."""

from __future__ import annotations

import signal

import torch

from lead_fast.distributed import all_max


class StopRequest:
    """Installed for the training loop's lifetime (a context manager). The first signal sets a flag the
    loop reads between steps; a second one stops at once (``KeyboardInterrupt``)."""

    def __init__(self):
        self.requested = False
        self._old: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum, frame):
        if self.requested:  # asked twice: stop now
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.requested = True

    def agreed(self, device: torch.device, group=None, elsewhere: bool = False) -> bool:
        """Collective over ``group`` (None: every rank): True on each of its ranks when any was signalled, or
        ``elsewhere`` is true on any (a signal heard by a rank outside the group), so they stop together."""
        return all_max(int(self.requested or elsewhere), device, group) > 0
