"""Run under torchrun: the policy under FSDP2 with bfloat16 mixed precision (on CPU, gloo), one loss forward;
writes the dtypes the loss head received as JSON.

argv: MODEL_DIR OUT_JSON [fixed]   (``fixed``: lead_fast's policy; otherwise FSDP2's default, which casts)
"""

import json
import sys
from dataclasses import fields

import torch
import torch.distributed as dist


def main():
    model_dir, out, which = sys.argv[1], sys.argv[2], sys.argv[3]
    import lead_fast.model as model
    from lead_fast.ops import LossParams, TokenInputs

    dist.init_process_group("gloo")
    seen = {}
    real_head = model.fused_grpo_loss

    def head(h, weight, tokens, params, **kw):
        seen.update(hidden=str(h.dtype), weight=str(weight.dtype),
                    **{f.name: str(getattr(tokens, f.name).dtype) for f in fields(tokens)
                       if getattr(tokens, f.name) is not None})
        return real_head(h, weight, tokens, params, **kw)

    model.fused_grpo_loss = head
    lm = model.load_model(model_dir, torch.float32, torch.device("cpu"))
    if which == "fixed":
        mp = model.mixed_precision(torch.bfloat16)
    else:   # FSDP2's defaults, for the negative control
        from torch.distributed.fsdp import MixedPrecisionPolicy

        mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32),) * 2
    policy = model.wrap(model.PolicyWithHead(lm, backend="torch"), torch.device("cpu"), mp)
    n, T = 7, 12
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, lm.config.vocab_size, (1, T), generator=g)
    rows = model.RowInputs(input_ids=ids, attention_mask=torch.ones_like(ids), hidden_rows=torch.arange(T - n - 1, T - 1))
    lp = -12.3456789 + torch.rand(n, generator=g)      # float32 log-probs where bf16 loses ~0.03
    tokens = TokenInputs(targets=ids[0, T - n:], advantages=torch.randn(n, generator=g), token_weights=torch.ones(n),
                         old_logprobs=lp, ref_logprobs=lp.clone(), correct_ratio=torch.rand(n, generator=g))
    outp = policy(rows, tokens, LossParams(kl_coef=0.1))
    outp.loss.backward()
    seen["loss_finite"] = bool(torch.isfinite(outp.loss).item())
    seen["param_dtype"] = str(next(policy.parameters()).dtype)
    with open(out, "w") as f:
        json.dump(seen, f)


if __name__ == "__main__":
    from lead_fast.distributed import exit_process

    main()
    exit_process(0)
