"""Recompute a saved step's update on another device, backend or precision, beside what the run logged.

    python -m lead_fast.replay --run-dir runs/x                      # step 1, on CPU, torch backend, float32
    python -m lead_fast.replay --run-dir runs/x --device cuda --backend triton --dtype bfloat16

A run saves the inputs of its first N updates with ``--run.save_samples N`` (``OUTPUT_DIR/samples/``: each
trainer rank's prompts, responses, advantages, correct ratios and engine log-probs). This command rebuilds
that step's update from them with the run's config (loss, aggregation, clipping, micro-batch layout) on the
device asked for, runs it once in one process, and prints its loss, entropy and gradient norm beside the ones
in ``metrics.jsonl``. It answers "does this device, backend or precision compute the same step?": a CUDA
bfloat16 run with the Triton head against float32 torch on CPU, say.

- The weights must be the ones the step started from: for step 1 the run's model (the default: the run's
  ``base_model/`` after a warm start or for the embedded demo, else ``model.path``); for a later step an export
  of the checkpoint before it (``python -m lead_fast.export``), given with ``--model``.
- Every trainer rank's file of the step is replayed together. That is the run's update when it took one
  optimizer step per batch (``optim.updates_per_batch`` 1: aggregation and clipping are over every rank's
  tokens, however they were split); with several, each rank drew its own mini-batches, so only a one-rank run
  is replayed then.
- On-policy (one update per batch) the clipped loss's value is the advantage-weighted token mean, whatever the
  weights: it checks the batch and the aggregation. The entropy and the gradient norm check the model's numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from lead_fast import run_dir
from lead_fast.errors import LeadFastError, ReplayError

COMPARED = ("loss", "entropy", "grad_norm", "clip_frac", "kl")
"""The update's results that metrics.jsonl logs under the same names."""
CHECKED = ("loss", "entropy", "grad_norm")
"""Those ``--rtol`` applies to (clip_frac and kl are 0 on-policy without a reference)."""


def run_config(output_dir: str):
    """The run's ``TrainConfig``, from its ``config.yaml``."""
    from lead_fast.cli import load_yaml
    from lead_fast.config import TrainConfig
    from lead_fast.errors import ConfigError

    path = os.path.join(output_dir, "config.yaml")
    if not os.path.isfile(path):
        raise ReplayError(f"{output_dir} is not a lead_fast run directory: it has no config.yaml")
    cfg = TrainConfig()
    try:
        load_yaml(cfg, path)
    except ConfigError as e:
        raise ReplayError(f"cannot read the run's config: {e}") from None
    return cfg


def logged_row(output_dir: str, step: int) -> dict | None:
    """The last row of ``metrics.jsonl`` for ``step`` (a resumed run may have logged it twice), or None."""
    row = None
    try:
        with open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                if r.get("step") == step:
                    row = r
    except (OSError, ValueError):
        return None
    return row


def replay(output_dir: str, step: int = 1, *, model: str | None = None, device_type: str = "cpu",
           backend: str = "torch", dtype: str = "float32", log=print) -> dict:
    """Run step ``step``'s saved update once; returns ``{"replay": the update's results, "logged": the run's row
    (or None), "seconds", "samples", "tokens", "model", ...}``. Collective on a world of one."""
    import torch

    from lead_fast.distributed import setup_distributed
    from lead_fast.model import PolicyWithHead, apply_liger_kernels, load_model, load_tokenizer, shard
    from lead_fast.update import update_settings
    from lead_fast.update import Updater, load_samples

    cfg = run_config(output_dir)
    files = run_dir.samples_files(output_dir, step)
    if not files:
        raise ReplayError(f"{output_dir} has no saved update inputs of step {step} ({run_dir.SAMPLES_DIR}/): a run "
                          f"saves those of its first N steps with --run.save_samples N")
    if cfg.optim.updates_per_batch > 1 and len(files) > 1:
        raise ReplayError(f"step {step} was {cfg.optim.updates_per_batch} optimizer steps over mini-batches each of "
                          f"{len(files)} ranks drew on its own; only a one-rank run's step can be replayed then")
    if step > 1 and model is None:
        raise ReplayError(f"step {step} started from the weights after step {step - 1}: export that checkpoint "
                          "(python -m lead_fast.export --checkpoint ...) and pass the export with --model")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ReplayError("--device cuda: this machine has no CUDA device")
    if backend == "triton" and device_type == "cpu" and not os.environ.get("TRITON_INTERPRET"):
        raise ReplayError("--backend triton on CPU runs the kernel in Triton's interpreter: set TRITON_INTERPRET=1 "
                          "(slow), or use --backend torch")
    if dtype == "bfloat16" and device_type != "cuda":
        raise ReplayError("--dtype bfloat16 needs --device cuda (the trainer's mixed precision is CUDA's)")
    base = run_dir.base_model_dir(output_dir, cfg.to_dict())     # the run's starting weights, and its reference
    model_dir = model or base

    samples, meta = [], {}
    for f in files:
        try:
            part, meta = load_samples(f)
        except Exception as e:  # noqa: BLE001  (torch.load raises several kinds on a damaged file)
            cause = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ReplayError(f"cannot read the saved update inputs {f}: {type(e).__name__}: {cause}") from None
        samples += part
    _, world, device = setup_distributed(device_type)
    if world != 1:
        raise ReplayError(f"replay runs in one process; it was launched on {world} ranks")
    head = dict(backend=backend, chunk_size=cfg.optim.loss_chunk_size or None)

    def policy_from(path: str, trainable: bool):
        lm = load_model(path, torch.float32, device, cfg.model.attn_implementation)
        apply_liger_kernels(lm, cfg.model.liger_kernels, device)
        return shard(PolicyWithHead(lm.requires_grad_(trainable), **head), device, getattr(torch, dtype),
                     cfg.model.activation_checkpointing and trainable)

    policy = policy_from(model_dir, True)
    ref = policy_from(base, False) if cfg.algo.kl_coef > 0 else None
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas,
                            weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: 1.0)
    settings, loss = update_settings(cfg, device.type)
    updater = Updater(policy, ref, opt, sched, settings, loss, pad_id=load_tokenizer(model_dir).pad_token_id,
                      device=device, rank=0, world=1, log=log)
    t0 = time.time()
    result = updater.update(samples, meta["step"], num_sampled=meta["num_sampled"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return dict(replay={k: result[k] for k in COMPARED}, logged=logged_row(output_dir, step),
                seconds=time.time() - t0, samples=len(samples), tokens=sum(len(s.response) for s in samples),
                ranks=len(files), model=model_dir, device=device_type, backend=backend, dtype=dtype, step=step)


def compare(res: dict, rtol: float) -> list[dict]:
    """One row per compared metric: the run's value, the replay's, their relative difference, and whether it
    is within ``rtol`` (checked metrics only; None where the run logged nothing to compare)."""
    rows = []
    logged = res["logged"] or {}
    for k in COMPARED:
        a, b = logged.get(k), res["replay"][k]
        a = math.nan if a is None else float(a)
        rel = abs(a - b) / max(abs(a), 1e-12) if math.isfinite(a) and math.isfinite(b) else math.nan
        ok = None
        if k in CHECKED and math.isfinite(a):
            ok = bool(math.isfinite(b) and (abs(a - b) <= rtol * abs(a) or abs(a - b) <= 1e-12))
        rows.append(dict(metric=k, run=a, replay=b, rel_diff=rel, within=ok))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lead_fast.replay", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True, help="the run's output directory (config.yaml, samples/, metrics)")
    ap.add_argument("--step", type=int, default=1, help="the step to replay, 1-based as in metrics.jsonl")
    ap.add_argument("--model", help="the weights the step started from (default: the run's model; step 1 only)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--backend", choices=("torch", "triton"), default="torch", help="the loss head's backend")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="compute dtype (bfloat16: FSDP2 mixed precision on CUDA, float32 master weights)")
    ap.add_argument("--rtol", type=float, default=1e-4,
                    help="largest relative difference in loss, entropy and gradient norm that counts as the same "
                         "step (exit 1 beyond it); the default suits float32 against float32")
    ap.add_argument("--json", help="also write the result and the comparison here")
    args = ap.parse_args(argv)
    if args.step < 1 or not (args.rtol >= 0):
        print("lead_fast.replay: --step must be >= 1 and --rtol >= 0", file=sys.stderr)
        return 2
    try:
        res = replay(args.run_dir, args.step, model=args.model, device_type=args.device, backend=args.backend,
                     dtype=args.dtype)
    except LeadFastError as e:
        print(f"lead_fast.replay: {e}", file=sys.stderr)
        return e.exit_code
    rows = compare(res, args.rtol)
    print(f"step {res['step']} of {args.run_dir}: {res['samples']} responses, {res['tokens']} response tokens from "
          f"{res['ranks']} rank file(s); replayed on {args.device}, {args.backend} head, {args.dtype}, in "
          f"{res['seconds']:.2f} s")
    print(f"| metric | run | replay | rel. diff | within {args.rtol:g} |")
    print("|---|---|---|---|---|")
    for r in rows:
        mark = {None: "", True: "yes", False: "NO"}[r["within"]]
        print(f"| {r['metric']} | {r['run']:.6g} | {r['replay']:.6g} | {r['rel_diff']:.2e} | {mark} |")
    if res["logged"] is None:
        print(f"(metrics.jsonl has no row for step {args.step}: nothing to compare with)")
    elif res["logged"].get("loss") is None:
        print(f"(step {args.step} updated nothing in the run, every group dropped: nothing to compare)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(res, rtol=args.rtol, comparison=rows), f, indent=1)
    return 1 if any(r["within"] is False for r in rows) else 0


if __name__ == "__main__":
    code = main()
    if "torch.distributed" in sys.modules:
        from lead_fast.distributed import exit_process

        exit_process(code)
    sys.exit(code)
