"""Comparing two runs as a whole: every logged value by key, and checkpoints tensor for tensor."""

import json
import math
import os
from pathlib import Path

import torch

# wall-clock values differ between any two runs; everything else a run logs is a function of its inputs
VARYING = ("time/", "tokens_per_s", "rollout/tokens_per_s")


def assert_same_rows(a: list[dict], b: list[dict], *, skip_prefixes=VARYING) -> None:
    """The same steps with the same keys, and the same values (NaN equal to NaN) but for the wall-clock ones;
    a key in one row only fails."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        ka, kb = set(ra), set(rb)
        assert ka == kb, (ra["step"], sorted(ka ^ kb))
        ka = {k for k in ka if not k.startswith(skip_prefixes)}
        for k in sorted(ka):
            x, y = ra[k], rb[k]
            same = x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
            assert same, (ra["step"], k, x, y)


# what two runs that should learn the same must log the same (disaggregated against colocated)
LEARNED = ("loss", "reward/mean", "accuracy", "response_length/mean", "grad_norm", "clip_frac", "entropy", "kl",
           "groups_dropped", "rollout/logprob_gap", "rollout/mismatch_kl", "rollout/is_weight_mean",
           "eval/accuracy", "eval/cons@n", "eval/response_length")


def assert_same_learning(a: list[dict], b: list[dict], keys=LEARNED) -> None:
    """The same steps, and in each the same value of every key in ``keys`` (a key missing in both is equal)."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for k in keys:
            assert ra.get(k) == rb.get(k), (ra["step"], k, ra.get(k), rb.get(k))


def load_checkpoint_files(path) -> dict:
    """A checkpoint directory as plain tensors: ``dcp`` (model and optimizer, every shard merged),
    ``rng-rank*`` and ``batches-rank*`` files, and the trainer state."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    path = Path(path)
    merged = path.parent / f"{path.name}.merged.pt"
    dcp_to_torch_save(str(path), str(merged))
    out = {"dcp": torch.load(merged, weights_only=False)}
    os.unlink(merged)
    for f in sorted(path.glob("*.pt")):
        out[f.name] = torch.load(f, weights_only=False)
    out["state"] = json.loads((path / "trainer_state.json").read_text())
    return out


def assert_same(a, b, where="") -> None:
    """Nested dicts / lists / tensors equal exactly (tensors by value, dtype and shape)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: differs by up to {(a.double() - b.double()).abs().max().item()}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, sorted(set(a) ^ set(b)))
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif hasattr(a, "__dataclass_fields__"):
        assert type(a) is type(b), where
        assert_same(vars(a), vars(b), where)
    else:
        assert a == b, (where, a, b)


def assert_same_checkpoint(a, b) -> int:
    """Two checkpoint directories hold the same model, optimizer (moments and step counts), scheduler, RNG
    states and stored batches; returns how many tensors were compared. The trainer states may differ only
    in what names the run (its id, output directory, resume flag) and in the file sizes it lists."""
    ca, cb = load_checkpoint_files(a), load_checkpoint_files(b)
    sa, sb = ca.pop("state"), cb.pop("state")
    assert_same(ca, cb)
    for s in (sa, sb):
        s.pop("run_id", None), s.pop("files", None)
        s["config"]["run"].pop("output_dir", None), s["config"]["run"].pop("resume", None)
    assert_same(sa, sb, "trainer_state")
    assert ca["dcp"]["model"] and ca["dcp"]["optim"]["state"], "an empty checkpoint compares equal to anything"
    return sum(1 for _ in _tensors(ca))


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v)
