#!/usr/bin/env bash
# Prepare, on this (CPU) machine, the one folder a GPU session needs besides the working tree: a lent GPU
# machine has no package registry, and every second there counts, so nothing is downloaded or trained there.
#   CARRY/wheels/       the pure-Python packages the device image lacks (for its Python 3.12): liger-kernel and
#                       cut-cross-entropy (peer rows and kernels), math-verify and what it needs (grading);
#   CARRY/tiny_model/   the embedded task's model after the tiny preset's warm start (300 SFT steps, seed 0),
#                       built here so that the GRPO run there starts training at once.
# Prints the folder's size (the device call carries at most 64 MiB) and the one call to make.
#
# Usage, from the repository root, in the project's environment:  bash benchmarks/gpu_prepare.sh
#   CARRY=DIR (default .gpu_carry, git-ignored), WARM_STEPS=N (default 300: the tiny preset's warm start)
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=${CARRY:-.gpu_carry}
WARM_STEPS=${WARM_STEPS:-300}
WHEELS=(liger-kernel==0.8.5 cut-cross-entropy==25.1.1 math-verify==0.9.0 latex2sympy2_extended==1.11.0
        antlr4-python3-runtime==4.13.2 trl==1.16.0)      # trl: its fused head is a peer row of bench_loss_head
mkdir -p "$CARRY/wheels"

echo "== wheels for the device's Python 3.12 (pure Python, no dependencies resolved: the image has the rest)"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d "$CARRY/wheels" "${WHEELS[@]}"
ls "$CARRY/wheels"

echo "== the tiny model after a $WARM_STEPS-step warm start (about 1-5 minutes on 2 cores; reused when built)"
python3 - "$CARRY/tiny_model" "$WARM_STEPS" <<'PY'
import sys
from lead_fast.warm_start import build_embedded_model
build_embedded_model(sys.argv[1], steps=int(sys.argv[2]), seed=0, log=lambda m: print(m, flush=True))
PY

size_kib=$(du -sk "$CARRY" | cut -f1)
echo "== $CARRY: $((size_kib / 1024)) MiB ($size_kib KiB) of the 64 MiB a device call carries"
if [ "$size_kib" -gt $((64 * 1024)) ]; then
    echo "too large to carry" >&2
    exit 1
fi
echo "next: one device call, run(command='bash benchmarks/gpu_session.sh', carry=['$CARRY'], timeout_s=420);"
echo "      check it first here with: bash benchmarks/gpu_session.sh --dry-run"
