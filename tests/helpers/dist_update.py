"""Run under torchrun: one update of a fixed global batch, then a weight sync; writes what it saw as JSON,
and the weights after the update (gathered) as OUT_JSON.weights.pt.

argv: MODEL_DIR DATA_FILE OUT_JSON [extra train.py arguments]
"""

import json
import os
import sys

import torch
import torch.distributed as dist


def main():
    model_dir, data, out, extra = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    from lead_fast.cli import parse_args
    from lead_fast.trainer import Trainer
    from lead_fast.update import Sample

    cfg = parse_args(["--preset", "tiny",
                      "--model", model_dir, "--data", data, "--output-dir", os.path.dirname(out) + "/run",
                      "--optim.lr", "1e-3", "--optim.prompts_per_step", "2", "--data.max_prompt_tokens", "512",
                      "--data.eval_size", "4", "--optim.micro_batch_tokens", "96", "--algo.entropy_coef", "0.01", *extra])
    tr = Trainer(cfg)
    rank, world = tr.rank, tr.world
    lm = tr.policy.lm
    tied = lm.get_output_embeddings().weight is lm.get_input_embeddings().weight    # after FSDP2 sharding
    g = torch.Generator().manual_seed(0)
    V = len(tr.tok)
    samples = []
    prompts = [torch.randint(2, V, (int(torch.randint(3, 20, (1,), generator=g)),), generator=g).tolist()
               for _ in range(2)]
    for i in range(8):  # the same global batch whatever the world size: two prompts, four responses each
        R = int(torch.randint(1, 30, (1,), generator=g))
        samples.append(Sample(prompts[i % 2], torch.randint(2, V, (R,), generator=g).tolist(),
                              float(torch.randn(1, generator=g)), float(torch.rand(1, generator=g))))
    mine = samples[rank::world]      # on two ranks, each rank one prompt's group
    # AdamW's first step is lr * g / (|g| + eps), about lr * sign(g): for a weight whose gradient is a sum
    # that nearly cancels, float32 reduction order (one rank vs two) changes that step by up to 1 % of lr
    # (seen: 8e-6 at lr 1e-3 with eps 1e-8, 3e-6 with eps 1e-6). eps 1e-4 (the typical |g| here is ~4e-3)
    # keeps that noise under 1e-6, while a sharded-optimizer fault (a shard not stepped, stepped twice,
    # another lr or moment) still moves weights by about lr.
    for g in tr.updater.opt.param_groups:
        g["eps"] = 1e-4
    before = {name: full.detach().cpu().clone() for name, full in tr.policy.hf_named_tensors()}
    res = tr.updater.update(mine, step=0, num_sampled=12)   # 12 sampled, 8 kept (for algo.loss_norm=sampled)
    eng = tr.engine.model.state_dict()
    # one rank: the engine generates with the policy's own tensors, current before any sync
    current = all(torch.equal(full.cpu(), eng[name].cpu()) for name, full in tr.policy.hf_named_tensors())
    # the same storage, not only equal values (one rank: the engine generates with the policy's own tensors)
    same_storage = all(eng[name].data_ptr() == t.data_ptr() for name, t in tr.policy.hf_named_tensors(local=True))
    tr.engine.update_weights(tr.policy.hf_named_tensors())
    exact, n, after = True, 0, {}
    for name, full in tr.policy.hf_named_tensors():
        exact &= torch.equal(full.cpu(), eng[name].cpu())
        after[name] = full.detach().cpu().clone()
        n += 1
    if rank == 0:   # the weights after the update, gathered whole, and how far the update moved them
        torch.save(after, out + ".weights.pt")
        moved = max((after[k] - before[k]).abs().max().item() for k in after)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(dict(loss=res["loss"], grad_norm=res["grad_norm"], clip_frac=res["clip_frac"],
                           entropy=res["entropy"], sync_exact=bool(exact), tensors=n, world=world,
                           engine_tensors=len(eng), tied_after_sharding=tied, engine_current_before_sync=current,
                           engine_shares_weights=tr.engine_shares_weights, same_storage=same_storage,
                           parameters=sum(1 for _ in tr.policy.parameters()),
                           fsdp_wrapped=hasattr(tr.policy, "set_requires_gradient_sync"), moved=moved), f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    from lead_fast.distributed import exit_process

    main()
    exit_process(0)
