"""Compile the loss head's row kernel for an H100 (sm_90) without a GPU and count what its loops issue.

    python benchmarks/kernel_sass.py                 # the Qwen vocabularies (151936, 152064), the configs pick_block chooses
    python benchmarks/kernel_sass.py --block 8192 --warps 32 --vocab 151936

Triton compiles to a cubin on any machine (its wheel ships ptxas and cuobjdump), so this runs on CPU.
It specializes the arguments the way a launch does (pointers and multiples of 16 are marked divisible by
16), disassembles the cubin and, for each loop of the kernel (a backward branch in the SASS), reports
the instructions it issues per vocabulary element and how many of those are MUFU (exp2/log) operations.

Why it matters: streaming a bf16 row at ~3 TB/s is ~1.5e12 elements/s; an H100 issues ~3e13 thread
instructions/s (132 SMs x 4 schedulers x 32 lanes x ~1.75 GHz) and ~3.7e12 MUFU ops/s, so a pass that
reads each element once stays memory-bound only under ~20 instructions and ~2 MUFU per element. These
are static counts, not timings: the timings come from bench_loss_head.py on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 is what launches use
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("kernel_sass.py compiles the real kernel: run it without TRITON_INTERPRET")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lead_fast.ops import rows_triton  # noqa: E402
from lead_fast.ops.head import buffer_stride  # noqa: E402

FLOAT_ARGS = ("inv_temp", "clip_low", "clip_high", "kl_coef", "ent_coef", "w_min", "w_max", "midpoint", "steepness",
              "is_cap", "is_low")
_TOOLS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def available() -> bool:
    """True where Triton's NVIDIA backend and its cuobjdump are installed (Linux x86_64/aarch64 wheels)."""
    return os.path.exists(os.path.join(_TOOLS, "cuobjdump"))


def compile_rows_kernel(V: int, block: int, warps: int, dtype: str = "bf16", grad: bool = True,
                        arch: int = 90, is_mode: int = 0):
    """The row kernel compiled for ``sm_{arch}`` as a launch on a ``(C, V)`` ``dtype`` buffer would compile it
    (``is_mode``: the rollout correction's ``IS_MODE``; 0, none, by default)."""
    k = rows_triton._grpo_rows_kernel
    sig = {n: "*fp32" for n in k.arg_names}
    sig.update(buf_ptr=f"*{dtype}", tgt_ptr="*i64", clip_ptr="*i8", flag_out_ptr="*i8", stride_buf="i32")
    sig.update({n: "fp32" for n in FLOAT_ARGS})
    const = dict(V=V, BLOCK=block, HAS_OLD=True, HAS_REF=True, HAS_RHO=True, COMPUTE_LOSS=grad, WRITE_GRAD=grad,
                 IS_MODE=is_mode)
    sig.update({n: "constexpr" for n in const})
    # a launch marks 16-byte-aligned pointers and integers divisible by 16 (the row stride, as the head
    # allocates the buffer, is a multiple of 64)
    stride = buffer_stride(V, "triton")
    div16 = [n for n in k.arg_names if sig[n].startswith("*") or (n == "stride_buf" and stride % 16 == 0)]
    attrs = {(k.arg_names.index(n),): [["tt.divisibility", 16]] for n in div16}
    src = ASTSource(k, sig, {(k.arg_names.index(n),): v for n, v in const.items()}, attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps))


def _cuobjdump(cubin: bytes, flag: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([os.path.join(_TOOLS, "cuobjdump"), flag, f.name], capture_output=True, text=True,
                              check=True).stdout


def _load_bytes(text: str) -> int:
    """Bytes one thread reads with a global load instruction (0 for anything else)."""
    m = re.search(r"\bLDG\.E((?:\.\w+)*)\s", text + " ")
    if not m:
        return 0
    mods = m.group(1)
    for suffix, nbytes in ((".128", 16), (".64", 8), (".U16", 2), (".S16", 2), (".U8", 1), (".S8", 1)):
        if suffix in mods:
            return nbytes
    return 4


def analyze(V: int, block: int, warps: int, dtype: str = "bf16", grad: bool = True, is_mode: int = 0) -> dict:
    """Registers, spills, and per-loop instruction counts of one compiled configuration."""
    ck = compile_rows_kernel(V, block, warps, dtype, grad, is_mode=is_mode)
    res = _cuobjdump(ck.asm["cubin"], "-res-usage")
    usage = {k.lower(): int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", res)}
    sass = _cuobjdump(ck.asm["cubin"], "-sass")
    instrs = []  # (address, opcode text)
    for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]+);", sass):
        instrs.append((int(m.group(1), 16), m.group(2).strip()))
    esize = {"bf16": 2, "fp16": 2, "fp32": 4}[dtype]
    loops = []
    for addr, text in instrs:
        br = re.match(r"(@!?U?P\w+\s+)?BRA\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)", text)
        if not br or int(br.group(2), 16) >= addr:
            continue  # not a branch, a forward branch, or the trailing self-loop
        body = [t for a, t in instrs if int(br.group(2), 16) <= a <= addr]
        # ptxas unrolls loops, so count the row elements one trip loads (per thread) rather than assume one
        loads = [_load_bytes(t) for t in body]
        loaded = sum(loads)
        elems = loaded / esize
        mufu = sum(1 for t in body if t.startswith("MUFU") or " MUFU" in t)
        wide = sum(b for b in loads if b == 16)
        loops.append(dict(instructions=len(body), elements=elems, mufu=mufu,
                          wide_load_fraction=round(wide / loaded, 3) if loaded else None,
                          per_element=round(len(body) / elems, 2) if elems else None,
                          mufu_per_element=round(mufu / elems, 3) if elems else None))
    return dict(V=V, block=block, warps=warps, dtype=dtype, mode="grad" if grad else "fwd",
                regs=usage.get("reg"), spill_bytes=usage.get("local", 0) + usage.get("stack", 0),
                shared=usage.get("shared"), loops=loops)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", default="151936,152064,32001", help="comma-separated V values")
    ap.add_argument("--block", type=int, default=None, help="override BLOCK (default: pick_block's choice)")
    ap.add_argument("--warps", type=int, default=None, help="override num_warps")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="logits buffer dtype")
    ap.add_argument("--is-mode", type=int, default=0, choices=(0, 1, 2, 3),
                    help="the rollout correction compiled in: 0 none, 1 token truncate, 2 token mask, 3 given weights")
    ap.add_argument("--out", default="kernel_sass.json", help="JSON output path")
    args = ap.parse_args(argv)
    if not available():
        sys.exit("Triton's NVIDIA backend tools (cuobjdump) are not installed with this Triton")
    rows = []
    for V in (int(v) for v in args.vocab.split(",")):
        block, warps = rows_triton.pick_block(V, gpu=True)
        block, warps = args.block or block, args.warps or warps
        for grad in (True, False):
            rows.append(dict(analyze(V, block, warps, args.dtype, grad, args.is_mode), is_mode=args.is_mode))
    with open(args.out, "w") as f:
        json.dump(dict(triton=triton.__version__, arch="sm_90", rows=rows), f, indent=1)
    print(f"triton {triton.__version__}, sm_90, {args.dtype} logits; counts are per vocabulary element")
    print(f"{'V':>7} {'BLOCK':>6} {'warps':>5} {'mode':<5} {'regs':>4} {'spill':>5}  loops: instr/elem (MUFU/elem)")
    for r in rows:
        loops = "  ".join(f"{lp['per_element']:.1f} ({lp['mufu_per_element']:.2f})" for lp in r["loops"]
                          if lp["per_element"] is not None)
        print(f"{r['V']:>7} {r['block']:>6} {r['warps']:>5} {r['mode']:<5} {r['regs']:>4} {r['spill_bytes']:>5}  {loops}")
    return rows


if __name__ == "__main__":
    main()
