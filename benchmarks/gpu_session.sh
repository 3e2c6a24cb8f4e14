#!/usr/bin/env bash
# One prepared run on a CUDA machine, each step time-boxed and saving as it goes:
#   0. probe: the GPU, torch, Triton, transformers, and which of liger-kernel, cut-cross-entropy, flash-attn,
#      vllm and math-verify import;
#   1. the GPU test module: the real kernel against float64 at realistic sizes, and every case of the CPU
#      tests (rollout-correction modes included). A failed test stops the session here: the benchmarks would
#      time a wrong kernel (FORCE=1 goes on anyway);
#   2. bench_loss_head.py at both Qwen-sized shapes against every peer, forward+backward and forward, then the
#      row-kernel BLOCK x warps x chunk-size sweep at the first shape;
#   3. bench_train_step.py (8 layers of Qwen2.5-1.5B, rows (a)..(e)) and bench_rollout.py (the transformers
#      engines, Qwen2.5-0.5B shapes, 256 new tokens);
#   4. cuda_grpo_run.py: the embedded task for 20 steps on one rank (NCCL, bf16, Triton head, packed rows), its
#      step 1 replayed in float32 with the torch head on CPU;
#   5. the tables.
# The time boxes add up to 525 s (the probe aside, about 10 s). STEPS="1 4" runs only those steps (0 and 5
# always run), e.g. to rerun one.
#
# Usage, from the repository root:  OUT=/path/to/results bash benchmarks/gpu_session.sh
# Everything is written under $WORK (default /tmp/lead_fast_gpu). After every step $OUT gets session.tgz (all of
# $WORK) and summary.txt (what this script printed), so a session cut short still returns what it did.
# Packages missing on the machine travel as wheels in .whl/ (all pure Python), made on a machine with pip:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl liger-kernel==0.8.5 cut-cross-entropy==25.1.1 \
#       math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2
set -u
OUT=${OUT:-gpu_results}
WORK=${WORK:-/tmp/lead_fast_gpu}
STEPS=${STEPS:-"1 2 3 4"}
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/summary.txt") 2>&1
SITE=${SITE:-/tmp/lead_fast_site}
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
        || echo "WARNING: the wheels in .whl/ did not install"
fi
export PYTHONPATH=$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}
export LEAD_FAST_NO_INTERPRET=1 TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
unset TRITON_INTERPRET

save() { tar czf "$OUT/session.tgz.tmp" -C "$WORK" . && mv "$OUT/session.tgz.tmp" "$OUT/session.tgz"; }
want() { [[ " $STEPS " == *" $1 "* ]]; }
took() { echo "($1 exit $2 after $((SECONDS - $3)) s)"; }

echo "== 0. probe"
{
    date -u +%FT%TZ
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
    timeout 30 python3 - <<'PY'
import importlib, importlib.metadata, torch, triton
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__,
      "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE")
for dist in ("transformers", "liger-kernel", "cut-cross-entropy", "flash-attn", "vllm", "math-verify", "datasets"):
    try:
        importlib.import_module(dist.replace("-", "_"))
        print(f"{dist}: {importlib.metadata.version(dist)}")
    except Exception as e:  # noqa: BLE001  (a broken install raises anything)
        print(f"{dist}: MISSING ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
PY
} > "$WORK/machine.txt" 2>&1
cat "$WORK/machine.txt"
save

if want 1; then
    echo "== 1. GPU tests"; t=$SECONDS
    timeout 100 python3 -m pytest -q -x -p no:cacheprovider tests/ops/test_loss_head_gpu.py > "$WORK/gpu_tests.txt" 2>&1
    code=$?; took tests $code $t; tail -4 "$WORK/gpu_tests.txt"; save
    if grep -qE "[0-9]+ (failed|error)" "$WORK/gpu_tests.txt" && [ "${FORCE:-0}" != 1 ]; then
        echo "the kernel failed its GPU tests: stopping here (FORCE=1 runs the rest anyway)"
        exit 1
    fi
fi

if want 2; then
    echo "== 2a. loss-head benchmark"; t=$SECONDS
    timeout 140 python3 benchmarks/bench_loss_head.py --out "$WORK/bench.json" > "$WORK/bench.txt" 2> "$WORK/bench.log"
    took bench $? $t; save
    echo "== 2b. sweep"; t=$SECONDS
    timeout 45 python3 benchmarks/bench_loss_head.py --sweep --shapes 8192x4096x151936 --out "$WORK/sweep.json" \
        > "$WORK/sweep.txt" 2> "$WORK/sweep.log"
    took sweep $? $t; save
fi

if want 3; then
    echo "== 3a. training step"; t=$SECONDS
    timeout 60 python3 benchmarks/bench_train_step.py --layers 8 --steps 2 --out "$WORK/train_step.json" \
        > "$WORK/train_step.txt" 2> "$WORK/train_step.log"
    took train_step $? $t; save
    echo "== 3b. rollout"; t=$SECONDS
    timeout 40 python3 benchmarks/bench_rollout.py --sizes 0.5b --max-new-tokens 256 --engines hf-generate,hf-continuous \
        --out "$WORK/rollout.json" > "$WORK/rollout.txt" 2> "$WORK/rollout.log"
    took rollout $? $t; save
fi

if want 4; then
    echo "== 4. GRPO-LEAD on CUDA, 20 steps, step 1 replayed on CPU"; t=$SECONDS
    timeout 120 python3 benchmarks/cuda_grpo_run.py --out "$WORK/grpo" > "$WORK/grpo.txt" 2>&1
    took grpo $? $t; save
fi

# the tables from the JSON, which each benchmark rewrites after every shape (so a timed-out run still shows)
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
echo "== 5. tables"
if want 2; then
    echo "-- sweep (fastest first)"; table "$WORK/sweep.json" sweep | head -40
    echo "-- benchmark"; table "$WORK/bench.json" bench
fi
if want 3; then
    echo "-- training step"; cat "$WORK/train_step.txt"
    echo "-- rollout"; cat "$WORK/rollout.txt"
fi
if want 4; then
    echo "-- GRPO-LEAD run"; sed -n '/^run: exit/,$p' "$WORK/grpo.txt"
fi
save
