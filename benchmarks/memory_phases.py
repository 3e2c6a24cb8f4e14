"""Where a lead_fast run's memory goes on CPU: the resident set next to what malloc holds live (glibc's
``mallinfo2``), at the trainer's construction and around each step's update.

    python benchmarks/memory_phases.py --model DIR [--trim] [-- more lead_fast flags]

The work is bench_vs_trl.py's (4 prompts x 8 responses x <= 64 tokens, generated sums, lr 1e-5, every group
kept). ``--trim``: ``malloc_trim(0)`` before and after each update, to see what glibc keeps of freed memory.
Prints one line per point; the difference between the resident set and the live bytes is what the allocator
holds beyond what the process uses (plus shared libraries and mapped files). glibc only (Linux).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


LIBC = ctypes.CDLL("libc.so.6")
LIBC.mallinfo2.restype = _MallInfo2
PAGE = os.sysconf("SC_PAGE_SIZE")
GIB = 2**30


def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def live() -> int:
    """Bytes malloc has handed out and not had back: heap chunks in use plus mmapped chunks."""
    m = LIBC.mallinfo2()
    return m.uordblks + m.hblkhd


class Peaks:
    """Both figures sampled every 20 ms; ``mark`` starts a new phase."""

    def __init__(self):
        self.rss = self.live = self.phase_rss = self.phase_live = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            r, m = resident(), live()
            self.rss, self.live = max(self.rss, r), max(self.live, m)
            self.phase_rss, self.phase_live = max(self.phase_rss, r), max(self.phase_live, m)
            time.sleep(0.02)

    def mark(self):
        self.phase_rss, self.phase_live = resident(), live()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trim", action="store_true")
    ap.add_argument("flags", nargs="*", help="more lead_fast flags (after --)")
    a = ap.parse_args(argv)

    import torch

    from lead_fast.cli import parse_args
    from lead_fast.trainer import Trainer

    torch.set_num_threads(a.threads)
    peaks = Peaks()

    def show(what):
        print(f"{what:34} resident {resident() / GIB:5.2f} GiB  live {live() / GIB:5.2f} GiB  "
              f"(phase peaks: resident {peaks.phase_rss / GIB:5.2f}, live {peaks.phase_live / GIB:5.2f})", flush=True)

    out = tempfile.mkdtemp(prefix="memory_phases_")
    cfg = parse_args(["--model", a.model, "--output-dir", out, "--max-steps", str(a.steps), "--eval-every", "0",
                      "--data.operands", "10,100", "--data.max_prompt_tokens", "128", "--optim.prompts_per_step", "4",
                      "--rollout.n", "8", "--rollout.max_new_tokens", "64", "--rollout.temperature", "0.7",
                      "--optim.lr", "1e-5", "--algo.drop_no_signal", "false", "--algo.drop_no_correct", "false",
                      "--run.seed", "0", *a.flags])
    trainer = Trainer(cfg)
    show("trainer built")
    update = trainer.updater.update

    def measured(*args, **kw):
        if a.trim:
            LIBC.malloc_trim(0)
        peaks.mark()
        show("update starts")
        result = update(*args, **kw)
        show("update ends")
        if a.trim:
            LIBC.malloc_trim(0)
            show("after malloc_trim")
        return result

    trainer.updater.update = measured
    try:
        trainer.fit()
    finally:
        trainer.close()
        shutil.rmtree(out, ignore_errors=True)
    print(f"whole run: resident peak {peaks.rss / GIB:.2f} GiB, live peak {peaks.live / GIB:.2f} GiB")


if __name__ == "__main__":
    main()
