"""Run under torchrun: an update whose loss is NaN must be skipped (weights untouched) and counted,
and the run must stop after run.max_nonfinite_steps in a row. argv: MODEL_DIR OUT_JSON"""

import json
import os
import sys

import torch
import torch.distributed as dist


def main():
    model_dir, out = sys.argv[1:3]
    from lead_fast.cli import parse_args
    from lead_fast.trainer import Trainer
    from lead_fast.update import NonFiniteError, Sample

    tr = Trainer(parse_args(["--preset", "tiny", "--model", model_dir, "--output-dir", os.path.dirname(out) + "/run",
                             "--run.max_nonfinite_steps", "2", "--optim.prompts_per_step", "2"]))
    before = [p.detach().clone() for p in tr.policy.parameters()]
    bad = [Sample([5, 6, 7], [8, 9], float("nan"), 0.5)]
    res = tr.updater.update(bad, step=0)
    unchanged = all(torch.equal(a, b.detach()) for a, b in zip(before, tr.policy.parameters()))
    stopped = ""
    try:
        tr.updater.update(bad, step=1)
    except NonFiniteError as e:
        stopped = str(e)
    if tr.rank == 0:
        with open(out, "w") as f:
            json.dump(dict(skipped=res["nonfinite_skipped"], updated=res["updated"], unchanged=unchanged,
                           stopped=stopped), f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    from lead_fast.distributed import exit_process

    main()
    exit_process(0)
