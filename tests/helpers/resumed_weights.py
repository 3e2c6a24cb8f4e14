"""Run under torchrun: build the trainer with ``--resume`` (no step runs) and compare the policy's weights
with two model directories: an export of the checkpoint it resumed from, and the base model. argv:
OUT_JSON EXPORT_DIR BASE_DIR, then train.py arguments. Writes the largest difference from each."""

import json
import sys

import torch.distributed as dist


def main():
    out, export_dir, base_dir, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    from transformers import AutoModelForCausalLM

    from lead_fast.cli import parse_args
    from lead_fast.trainer import Trainer

    tr = Trainer(parse_args(args))
    mine = dict(tr.policy.hf_named_tensors())      # a collective: every rank gathers
    if tr.rank == 0:
        diffs = {}
        for label, path in (("export", export_dir), ("base", base_dir)):
            other = AutoModelForCausalLM.from_pretrained(path).state_dict()
            diffs[label] = max(float((t - other[k]).abs().max()) for k, t in mine.items())
        with open(out, "w") as f:
            json.dump(dict(diffs, tensors=len(mine), start_step=tr.start_step, world=tr.world), f)
    tr.close()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    from lead_fast.distributed import exit_process

    main()
    exit_process(0)
