#!/usr/bin/env bash
# One prepared run on a CUDA machine, in priority order, each step time-boxed and saving as it goes:
#   1. the GPU test module (the real kernel vs float64 at realistic sizes),
#   2. the benchmark (both Qwen-sized shapes, every peer, fwd+bwd and fwd),
#   3. the tuning sweep (row-kernel BLOCK x warps x chunk size at the first shape),
#   4. one full training step, the usual path against lead_fast's (8 layers of Qwen2.5-1.5B),
#   5. rollout generation: transformers generate vs continuous batching (Qwen2.5-0.5B shapes, 256 tokens).
# Usage, from the repository root:  OUT=/path/to/results bash benchmarks/gpu_session.sh   (under ~10 min)
# Peers that are pure Python (liger-kernel, cut-cross-entropy, pytest) may travel as wheels in .whl/:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl liger-kernel==0.8.5 cut-cross-entropy==25.1.1
set -u
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl && export PYTHONPATH=$PWD/.site${PYTHONPATH:+:$PYTHONPATH}
fi
export LEAD_FAST_NO_INTERPRET=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
    date -u +%FT%TZ
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

echo "== 1. GPU tests"
timeout 140 python3 -m pytest -q -x -p no:cacheprovider tests/ops/test_loss_head_gpu.py > "$OUT/gpu_tests.txt" 2>&1
echo "pytest exit $?"; tail -3 "$OUT/gpu_tests.txt"

echo "== 2. benchmark"
timeout 210 python3 benchmarks/bench_loss_head.py --out "$OUT/bench.json" > "$OUT/bench.txt" 2> "$OUT/bench.log"
echo "bench exit $?"

echo "== 3. sweep"
timeout 90 python3 benchmarks/bench_loss_head.py --sweep --shapes 8192x4096x151936 --out "$OUT/sweep.json" \
    > "$OUT/sweep.txt" 2> "$OUT/sweep.log"
echo "sweep exit $?"

echo "== 4. training step"
timeout 90 python3 benchmarks/bench_train_step.py --layers 8 --steps 2 --out "$OUT/train_step.json" \
    > "$OUT/train_step.txt" 2> "$OUT/train_step.log"
echo "train step exit $?"

echo "== 5. rollout"
timeout 60 python3 benchmarks/bench_rollout.py --sizes 0.5b --max-new-tokens 256 --engines hf-generate,hf-continuous \
    --out "$OUT/rollout.json" > "$OUT/rollout.txt" 2> "$OUT/rollout.log"
echo "rollout exit $?"

# the tables from the JSON, which each script rewrites after every shape (so a timed-out run still shows)
table() {
    python3 - "$1" "$2" <<'PY'
import json, sys
sys.path.insert(0, "benchmarks")
import bench_loss_head as b
try:
    rows = json.load(open(sys.argv[1]))["rows"]
except (OSError, ValueError) as e:
    sys.exit(f"no results: {e}")
b.print_table(b.fastest_first(rows) if sys.argv[2] == "sweep" else rows)
PY
}
echo "== sweep (fastest first)"; table "$OUT/sweep.json" sweep | head -40
echo "== benchmark"; table "$OUT/bench.json" bench
echo "== training step"; cat "$OUT/train_step.txt"
echo "== rollout"; cat "$OUT/rollout.txt"
