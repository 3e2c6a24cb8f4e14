"""The row kernel compiled for an H100 (sm_90) on this CPU machine: what the interpreter cannot show.

The interpreter runs the kernel's Python; this compiles it the way a launch would (Triton's wheel ships
ptxas) and checks the machine code: it builds, nothing spills to local memory, and the streaming loops
read the row with 16-byte vector loads (one per 8 bf16 logits), for the DESIGN.md vocabularies and an
odd one. Instruction counts per element are reported by ``benchmarks/kernel_sass.py``, not asserted.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
kernel_sass = pytest.importorskip("kernel_sass")

from lead_fast.ops.rows_triton import pick_block  # noqa: E402

pytestmark = pytest.mark.skipif(not kernel_sass.available(), reason="Triton's NVIDIA backend tools are not installed")


@pytest.mark.parametrize("V", [151936, 152064, 32001])
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "fwd"])
def test_row_kernel_compiles_for_sm90(V, grad):
    block, warps = pick_block(V, gpu=True)
    r = kernel_sass.analyze(V, block, warps, "bf16", grad)
    assert r["spill_bytes"] == 0, r
    loops = [lp for lp in r["loops"] if lp["elements"]]
    assert len(loops) == (2 if grad else 1), r          # pass 1 (+ pass 2), the unmasked full blocks
    for lp in loops:
        assert lp["wide_load_fraction"] == 1.0, r
        assert lp["mufu_per_element"] <= 1.2, r          # one exp2 per element, one rescale per 8


def test_fp32_buffer_compiles():
    r = kernel_sass.analyze(4099, 128, 4, "fp32", True)
    assert r["spill_bytes"] == 0
