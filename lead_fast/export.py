"""Export a checkpoint as a Hugging Face model directory (safetensors + config + tokenizer).

    python -m lead_fast.export --output-dir runs/tiny                 # the newest checkpoint
    python -m lead_fast.export --checkpoint runs/tiny/checkpoints/step-00000040 --out exported/

Runs in one process on CPU: DCP reads the sharded checkpoint into a full model, whatever world size
wrote it. The base model directory (architecture + tokenizer) is taken from the checkpoint's config.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from lead_fast import checkpoint as ckpt
from lead_fast.model import PolicyWithHead


def export_checkpoint(checkpoint_dir: str, out_dir: str, base_model_dir: str | None = None) -> str:
    import torch.distributed.checkpoint as dcp
    from transformers import AutoModelForCausalLM, AutoTokenizer

    state_path = os.path.join(checkpoint_dir, ckpt.STATE_FILE)
    if not os.path.exists(state_path):
        raise FileNotFoundError(f"{checkpoint_dir} is not a complete lead_fast checkpoint (no {ckpt.STATE_FILE})")
    with open(state_path) as f:
        state = json.load(f)
    if base_model_dir is None:
        cfg = state["config"]
        base_model_dir = cfg["model"]["path"] or os.path.join(cfg["run"]["output_dir"], "base_model")
    if not os.path.isdir(base_model_dir):
        raise FileNotFoundError(f"base model directory {base_model_dir} not found; pass --base-model")
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    sd = {PolicyWithHead.key_for(k): v for k, v in model.state_dict().items()}
    dcp.load({"model": sd}, checkpoint_id=checkpoint_dir)
    model.load_state_dict({PolicyWithHead.hf_name(k): v for k, v in sd.items()})
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_model_dir).save_pretrained(out_dir)
    return out_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lead_fast.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-dir", help="a run's output directory: export its newest checkpoint")
    ap.add_argument("--checkpoint", help="a checkpoint directory (…/checkpoints/step-XXXXXXXX)")
    ap.add_argument("--out", help="where to write the model directory (default OUTPUT_DIR/export/step-N)")
    ap.add_argument("--base-model", help="model directory with the architecture and tokenizer "
                                         "(default: the one the run trained)")
    args = ap.parse_args(argv)
    path = args.checkpoint
    if path is None:
        if args.output_dir is None:
            ap.error("give --output-dir or --checkpoint")
        path = ckpt.latest_checkpoint(args.output_dir)
        if path is None:
            print(f"lead_fast.export: no complete checkpoint in {ckpt.checkpoint_root(args.output_dir)}", file=sys.stderr)
            return 2
    out = args.out or os.path.join(os.path.dirname(os.path.dirname(path)), "export", os.path.basename(path))
    try:
        export_checkpoint(path, out, args.base_model)
    except (FileNotFoundError, ValueError) as e:
        print(f"lead_fast.export: {e}", file=sys.stderr)
        return 2
    print(f"exported {path} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
