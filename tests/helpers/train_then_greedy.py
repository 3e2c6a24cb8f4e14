"""Run under torchrun: a short training run, then greedy responses from the rollout engine (which holds
the trained weights after the last sync). argv: OUT_JSON, then train.py arguments."""

import json
import sys

import torch.distributed as dist


def main():
    out, args = sys.argv[1], sys.argv[2:]
    from lead_fast.cli import parse_args
    from lead_fast.rollout import SamplingSettings
    from lead_fast.trainer import Trainer

    tr = Trainer(parse_args(args))
    tr.fit()
    prompts = [p.ids for p in tr.eval[:4]]
    greedy = [tr.engine.generate([p], SamplingSettings(n=1, temperature=0, max_new_tokens=24))[0][0].token_ids
              for p in prompts]
    if tr.rank == 0:
        with open(out, "w") as f:
            json.dump({"prompts": prompts, "greedy": greedy}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    from lead_fast.distributed import exit_process

    main()
    exit_process(0)
