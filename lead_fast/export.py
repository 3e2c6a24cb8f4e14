"""Export a checkpoint as a Hugging Face model directory (safetensors + config + tokenizer).

    python -m lead_fast.export --output-dir runs/tiny                 # the newest intact checkpoint
    python -m lead_fast.export --checkpoint runs/tiny/checkpoints/step-00000040 --out exported/

Runs in one process on CPU: DCP reads the sharded checkpoint into a full model, whatever world size
wrote it. The base model directory (architecture + tokenizer) is the one the run trained: ``model.path``
from the run's config, or the run's own ``base_model/`` for the embedded demo. The export is written
next to ``--out`` and renamed into place when complete; ``--out`` must not exist or be an empty
directory, unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import torch

from lead_fast import checkpoint as ckpt
from lead_fast import run_dir
from lead_fast.errors import ExportError, LeadFastError, describe_os_error
from lead_fast.model import PolicyWithHead


def base_model_for(checkpoint_dir: str, state: dict) -> str:
    """The run's base model directory (``run_dir.base_model_dir``), found from any working directory: the
    checkpoint lies in OUTPUT_DIR/checkpoints/."""
    output_dir = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint_dir)))
    return run_dir.base_model_dir(output_dir, state.get("config") or {})


def _check_out(out_dir: str, overwrite: bool) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ExportError(f"--out {out_dir} is a file; give a directory path")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise ExportError(f"--out {out_dir} is not empty; choose another directory or add --overwrite to "
                          "replace it")


def export_checkpoint(checkpoint_dir: str, out_dir: str, base_model_dir: str | None = None, *,
                      overwrite: bool = False) -> str:
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    broken = ckpt.damage(checkpoint_dir)
    if broken:
        raise ExportError(f"{checkpoint_dir} is not a complete lead_fast checkpoint: {broken}")
    state = ckpt.read_state(checkpoint_dir)
    _check_out(out_dir, overwrite)
    base_model_dir = base_model_dir or base_model_for(checkpoint_dir, state)
    if not os.path.isdir(base_model_dir):
        raise ExportError(f"base model directory {base_model_dir} not found; pass --base-model")
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    sd = {PolicyWithHead.key_for(k): v for k, v in model.state_dict().items()}
    dcp.load({"model": sd}, checkpoint_id=checkpoint_dir)
    model.load_state_dict({PolicyWithHead.hf_name(k): v for k, v in sd.items()})
    tmp = os.path.join(os.path.dirname(os.path.abspath(out_dir)), f".tmp-export-{os.path.basename(out_dir)}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(base_model_dir).save_pretrained(tmp)
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"could not write the export to {out_dir}: {describe_os_error(e)}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lead_fast.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-dir", help="a run's output directory: export its newest intact checkpoint")
    ap.add_argument("--checkpoint", help="a checkpoint directory (…/checkpoints/step-XXXXXXXX)")
    ap.add_argument("--out", help="where to write the model directory (default OUTPUT_DIR/export/step-N)")
    ap.add_argument("--base-model", help="model directory with the architecture and tokenizer "
                                         "(default: the one the run trained)")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = ap.parse_args(argv)
    path = args.checkpoint
    if path is None:
        if args.output_dir is None:
            ap.error("give --output-dir or --checkpoint")
        path = ckpt.latest_checkpoint(args.output_dir)
        if path is None:
            print(f"lead_fast.export: no intact checkpoint in {ckpt.checkpoint_root(args.output_dir)}",
                  file=sys.stderr)
            return 2
    out = args.out or os.path.join(os.path.dirname(os.path.dirname(path)), "export", os.path.basename(path))
    try:
        export_checkpoint(path, out, args.base_model, overwrite=args.overwrite)
    except LeadFastError as e:
        print(f"lead_fast.export: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("lead_fast.export: interrupted; nothing was written", file=sys.stderr)
        return 130
    print(f"exported {path} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
