#!/usr/bin/env bash
# One prepared run on a CUDA machine (an H100/H200), each step time-boxed, its result printed as it finishes:
#   0. probe: the GPU, torch, Triton, transformers, and which of liger-kernel, cut-cross-entropy, flash-attn,
#      vllm and math-verify import;
#   1. the gate: the GPU test module (the real kernel against float64 at realistic sizes, and every case of
#      the CPU tests, rollout-correction modes included). A failed or timed-out test run stops the session:
#      the benchmarks would time an unchecked kernel (FORCE=1 goes on anyway);
#   2. bench_loss_head.py at both Qwen-sized shapes against every peer, forward+backward and forward, then the
#      row-kernel BLOCK x warps x chunk-size sweep at the first shape;
#   3. bench_train_step.py (8 layers of Qwen2.5-1.5B, rows (a)..(e));
#   4. cuda_grpo_run.py: the embedded task on one rank (NCCL, bf16, Triton head, packed rows) from the model
#      gpu_prepare.sh warm-started on CPU, its step 1 replayed in float32 with the torch head on CPU;
#   5. (only when asked: STEPS="5") bench_rollout.py, the transformers engines at Qwen2.5-0.5B shapes.
# The boxes of steps 0-4 add up to 350 s, so that one rerun fits a 15-minute lease with the start-up.
#
# Prepare first, here:   bash benchmarks/gpu_prepare.sh        (fills .gpu_carry/: wheels and the model)
# Check the plan:        bash benchmarks/gpu_session.sh --dry-run
# On the GPU machine:    bash benchmarks/gpu_session.sh         (OUT=results; STEPS="1 4" reruns those steps)
# Everything is written under $WORK (default /tmp/lead_fast_gpu). $OUT gets summary.txt first (what this
# script prints: every step's result as it ends), then session.tgz (all of $WORK), remade after each step, so a
# session cut short still returns what it did. The exit code is 0 only when every step asked for passed.
set -u
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
CARRY=${CARRY:-.gpu_carry}
STEPS=${STEPS:-"1 2 3 4"}
WORK=${WORK:-/tmp/lead_fast_gpu}
MODEL=$CARRY/tiny_model
WHEELS="liger_kernel cut_cross_entropy math_verify latex2sympy2_extended antlr4_python3_runtime trl"
# step: box seconds and command; a step's output goes to $WORK/<name>.txt
declare -A BOX=([probe]=15 [gate]=60 [bench]=110 [sweep]=30 [train_step]=50 [grpo]=85 [rollout]=40)
declare -A CMD=(
    [gate]="python3 -m pytest -q -x -p no:cacheprovider tests/ops/test_loss_head_gpu.py"
    [bench]="python3 benchmarks/bench_loss_head.py --rep 100 --out $WORK/bench.json"
    [sweep]="python3 benchmarks/bench_loss_head.py --sweep --rep 100 --shapes 8192x4096x151936 --out $WORK/sweep.json"
    [train_step]="python3 benchmarks/bench_train_step.py --layers 8 --steps 2 --out $WORK/train_step.json"
    [grpo]="python3 benchmarks/cuda_grpo_run.py --steps 12 --out $WORK/grpo -- --model $MODEL --run.warm_start_steps 0"
    [rollout]="python3 benchmarks/bench_rollout.py --sizes 0.5b --max-new-tokens 256 --engines hf-generate,hf-continuous --out $WORK/rollout.json"
)
declare -A NAMES=([1]="gate" [2]="bench sweep" [3]="train_step" [4]="grpo" [5]="rollout")
want() { [[ " $STEPS " == *" $1 "* ]]; }

plan() {
    local total=${BOX[probe]} n name
    echo "plan (STEPS=\"$STEPS\", time boxes in seconds):"
    echo "  0 probe        ${BOX[probe]} s"
    for n in 1 2 3 4 5; do
        want $n || continue
        for name in ${NAMES[$n]}; do
            printf '  %s %-12s %3d s  %s\n' "$n" "$name" "${BOX[$name]}" "${CMD[$name]}"
            total=$((total + BOX[$name]))
        done
    done
    echo "  in all: $total s of boxes"
    TOTAL=$total
}

if [ $DRY = 1 ]; then
    # Everything the session reads, checked here; nothing is run on a GPU.
    bad=0
    fail() { echo "MISSING: $*"; bad=1; }
    for f in tests/ops/test_loss_head_gpu.py benchmarks/bench_loss_head.py benchmarks/bench_train_step.py \
             benchmarks/cuda_grpo_run.py benchmarks/bench_rollout.py lead_fast/replay.py; do
        [ -f "$f" ] || fail "$f"
    done
    for w in $WHEELS; do
        compgen -G "$CARRY/wheels/${w}-*.whl" > /dev/null || fail "a $w wheel in $CARRY/wheels (bash benchmarks/gpu_prepare.sh)"
    done
    if [ -f "$MODEL/lead_fast_warmstart.json" ] && [ -f "$MODEL/config.json" ] && [ -f "$MODEL/model.safetensors" ] \
            && [ -f "$MODEL/tokenizer.json" ]; then
        echo "model: $MODEL, warm start $(cat "$MODEL/lead_fast_warmstart.json")"
    else
        fail "the warm-started model in $MODEL (bash benchmarks/gpu_prepare.sh)"
    fi
    size_kib=$(du -sk "$CARRY" 2>/dev/null | cut -f1)
    echo "carry: $CARRY, $(( ${size_kib:-0} / 1024 )) MiB"
    [ "${size_kib:-0}" -le $((64 * 1024)) ] || fail "room: $CARRY is over the 64 MiB a device call carries"
    python3 -c "import lead_fast.replay, lead_fast.train" || fail "an importable lead_fast"
    plan
    # the default session must leave room for a rerun: 2 x (boxes + ~60 s start-up) within 900 s
    if [ "$STEPS" = "1 2 3 4" ] && [ "$TOTAL" -gt 360 ]; then fail "time: the boxes add up to $TOTAL s (> 360 s)"; fi
    [ $bad = 0 ] && echo "dry run: ready" || echo "dry run: NOT ready"
    exit $bad
fi

OUT=${OUT:-gpu_results}
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
exec > >(tee -a "$OUT/summary.txt") 2>&1
SITE=${SITE:-/tmp/lead_fast_site}
if compgen -G "$CARRY/wheels/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$CARRY"/wheels/*.whl || echo "WARNING: the wheels in $CARRY/wheels did not install"
fi
export PYTHONPATH=$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}
export LEAD_FAST_NO_INTERPRET=1 TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
save() { tar czf "$OUT/session.tgz.tmp" -C "$WORK" . && mv "$OUT/session.tgz.tmp" "$OUT/session.tgz"; }
FAILED=""

# run NAME: the step's command in its box; its last lines printed; a time-out (exit 124) is a failure
run_step() {
    local name=$1 t=$SECONDS code
    echo "== $name (box ${BOX[$name]} s): ${CMD[$name]}"
    timeout "${BOX[$name]}" bash -c "${CMD[$name]}" > "$WORK/$name.txt" 2>&1
    code=$?
    [ $code = 124 ] && echo "TIMED OUT after ${BOX[$name]} s"
    echo "($name exit $code after $((SECONDS - t)) s)"
    [ $code = 0 ] || FAILED="$FAILED $name"
    return $code
}

# a benchmark's table from its JSON, which it rewrites after every shape (so a timed-out run still shows)
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

plan
echo "== probe"
{
    date -u +%FT%TZ
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
    timeout "${BOX[probe]}" python3 - <<'PY'
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
} > "$WORK/probe.txt" 2>&1
cat "$WORK/probe.txt"
save

if want 1; then
    run_step gate
    tail -4 "$WORK/gate.txt"
    save
    if [ -n "$FAILED" ] && [ "${FORCE:-0}" != 1 ]; then
        echo "the kernel did not pass its GPU tests: stopping here (FORCE=1 runs the rest anyway)"
        exit 1
    fi
fi
if want 2; then
    run_step bench; echo "-- loss head"; table "$WORK/bench.json" bench; save
    run_step sweep; echo "-- sweep (fastest first)"; table "$WORK/sweep.json" sweep | head -25; save
fi
if want 3; then
    run_step train_step; tail -20 "$WORK/train_step.txt"; save
fi
if want 4; then
    run_step grpo; sed -n '/^run: exit/,$p' "$WORK/grpo.txt"; save
fi
if want 5; then
    run_step rollout; tail -20 "$WORK/rollout.txt"; save
fi
if [ -n "$FAILED" ]; then echo "== done: FAILED:$FAILED"; exit 1; fi
echo "== done: every step passed"
