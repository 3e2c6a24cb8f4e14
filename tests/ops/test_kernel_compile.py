"""The row kernel compiled for an H100 (sm_90) on this CPU machine: what the interpreter cannot show.

The interpreter runs the kernel's Python; ``benchmarks/kernel_sass.py`` compiles it the way a launch
would (Triton's wheel ships ptxas) and reads the machine code. Checked here: it builds for the Qwen-sized
vocabularies and an odd one, in bf16 and fp32, nothing spills to local memory, the streaming loops read
the row with 16-byte vector loads only, and they issue one exp2 per logit plus one rescale per 8.
Instruction counts per logit are reported by the script, not asserted. It runs in a subprocess without
TRITON_INTERPRET (this test process has the interpreter on).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "kernel_sass.py"


def _has_tools() -> bool:
    import triton

    return (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump").exists()


pytestmark = pytest.mark.skipif(not _has_tools(), reason="Triton's NVIDIA backend tools are not installed")


def _run(tmp_path_factory, *args):
    out = tmp_path_factory.mktemp("sass") / "s.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(out)], check=True, env=env, cwd=ROOT,
                   capture_output=True, text=True, timeout=600)
    return json.loads(out.read_text())["rows"]


@pytest.fixture(scope="module")
def bf16_rows(tmp_path_factory):
    return _run(tmp_path_factory, "--vocab", "151936,152064,32001")


@pytest.mark.parametrize("V", [151936, 152064, 32001])
@pytest.mark.parametrize("mode", ["grad", "fwd"])
def test_row_kernel_compiles_for_sm90(bf16_rows, V, mode):
    from lead_fast.ops.rows_triton import pick_block

    (r,) = [r for r in bf16_rows if r["V"] == V and r["mode"] == mode]
    assert (r["block"], r["warps"]) == pick_block(V, gpu=True)
    assert r["spill_bytes"] == 0, r
    loops = [lp for lp in r["loops"] if lp["elements"]]
    assert len(loops) == (2 if mode == "grad" else 1), r    # pass 1 (and pass 2) over the unmasked blocks
    for lp in loops:
        assert lp["wide_load_fraction"] == 1.0, r
        assert lp["mufu_per_element"] <= 1.2, r


def test_fp32_buffer_compiles(tmp_path_factory):
    rows = _run(tmp_path_factory, "--vocab", "4099", "--dtype", "fp32")
    assert [r["mode"] for r in rows] == ["grad", "fwd"]
    assert all(r["spill_bytes"] == 0 for r in rows)


@pytest.mark.parametrize("is_mode", [1, 2, 3])
def test_rollout_correction_modes_compile_without_spills(tmp_path_factory, is_mode):
    """The rollout correction's kernel variants (token truncate, token mask, given weights) build for sm_90
    and keep the streaming loops as wide and as cheap as without a correction."""
    rows = _run(tmp_path_factory, "--vocab", "151936", "--is-mode", str(is_mode))
    for r in rows:
        assert r["is_mode"] == is_mode and r["spill_bytes"] == 0, r
        for lp in (lp for lp in r["loops"] if lp["elements"]):
            assert lp["wide_load_fraction"] == 1.0 and lp["mufu_per_element"] <= 1.2, r
