"""Run under torchrun: a synthetic rollout-trainer mismatch. For each correction and rejection case: fill a fixed global
batch's trainer log-probs at the current weights, make the engine's log-probs those plus a known per-token
offset, run one update and record its mismatch metrics. argv: MODEL_DIR DATA_FILE OUT_JSON [train.py flags]

The offsets cycle through DELTAS by token position, so every ratio exp(-delta) is known in advance
(2.72, 1, 0.37, 0.74, 1.35): the test computes the expected weights and masks by hand."""

import dataclasses
import json
import os
import sys

import torch
import torch.distributed as dist

DELTAS = (-1.0, 0.0, 1.0, 0.3, -0.3)
# each case's LossParams changes (the correction's lower bound 0.5 where one is set; cap 2, the rejection's
# bounds [0.5, 2] by default)
CASES = {
    "none": dict(correction="none"),
    "token_truncate": dict(correction="token_truncate"),
    "token_truncate_low": dict(correction="token_truncate", correction_low=0.5),
    "token_mask": dict(correction="token_mask", correction_low=0.5),
    "sequence_truncate": dict(correction="sequence_truncate"),
    "sequence_mask": dict(correction="sequence_mask", correction_low=0.5),
    "geometric_rejection": dict(correction="none", rejection="geometric"),
    "token_truncate_token_rejection": dict(correction="token_truncate", rejection="token"),
}


def main():
    model_dir, data, out, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    from lead_fast.cli import parse_args
    from lead_fast.trainer import Trainer
    from lead_fast.update import Sample

    cfg = parse_args(["--preset", "tiny", "--model", model_dir, "--data", data,
                      "--output-dir", os.path.dirname(out) + "/run", "--optim.lr", "1e-4",
                      "--optim.prompts_per_step", "2", "--data.max_prompt_tokens", "512", "--data.eval_size", "4",
                      "--optim.micro_batch_tokens", "96", "--rollout.logprobs", "true", *extra])
    tr = Trainer(cfg)
    g = torch.Generator().manual_seed(0)
    V = len(tr.tok)
    shapes = [(int(torch.randint(3, 20, (1,), generator=g)), int(torch.randint(1, 30, (1,), generator=g)))
              for _ in range(8)]
    samples = [Sample(torch.randint(2, V, (P,), generator=g).tolist(), torch.randint(2, V, (R,), generator=g).tolist(),
                      float(torch.randn(1, generator=g)), float(torch.rand(1, generator=g))) for P, R in shapes]
    mine = samples[tr.rank::tr.world]        # the same global batch whatever the world size
    results = {}
    for mode, changes in CASES.items():
        tr.updater.loss = dataclasses.replace(tr.updater.loss, **{"correction_low": None, "rejection": "none",
                                                                   **changes})
        tr.updater._fill_logprobs(tr.policy, mine, "old_logprobs")       # the trainer's own, at these weights
        for s in mine:
            delta = torch.tensor([DELTAS[t % len(DELTAS)] for t in range(len(s.response))])
            s.rollout_logprobs, s.old_logprobs = s.old_logprobs + delta, None    # on-policy update
        results[mode] = tr.updater.update(mine, step=0)
    if tr.rank == 0:
        with open(out, "w") as f:
            json.dump(dict(lengths=[R for _, R in shapes], world=tr.world, results=results), f)
    tr.close()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    from lead_fast.distributed import exit_process

    main()
    exit_process(0)
