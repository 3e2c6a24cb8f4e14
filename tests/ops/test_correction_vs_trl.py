"""The rollout correction under TRL's names means what TRL computes: ``vllm_importance_sampling_mode`` with its
``clip_min`` / ``clip_max``, checked on TRL's documented vector and on random responses of mixed lengths
against a transcription of TRL 1.16.0's code, through both backends of the loss head."""

import math

import pytest
import torch

from lead_fast.ops import grpo_loss
from tests.helpers.launch import skip_unless_interpreted
from tests.helpers.loss_cases import BACKENDS

MODES = ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


def trl_is_ratio(train_lp, engine_lp, mask, mode, clip_min, clip_max):
    """TRL 1.16.0's importance-sampling ratio (``GRPOTrainer._generate_and_score_completions``, the
    ``vllm_importance_sampling_correction`` branch), transcribed: ``(B, T)`` right-padded log-probs and the
    completion mask; ``(B, T)`` for token modes, ``(B, 1)`` for sequence modes."""
    diff = torch.nan_to_num((train_lp - engine_lp) * mask, nan=0.0)
    if mode in ("sequence_mask", "sequence_truncate"):
        diff = diff.sum(dim=-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode in ("sequence_truncate", "token_truncate"):
        return torch.clamp(ratio, min=clip_min, max=clip_max)
    low = clip_min if clip_min is not None else -math.inf
    high = clip_max if clip_max is not None else math.inf
    return ratio.masked_fill((ratio < low) | (ratio > high), value=0.0)


def lead_fast_weights(train, engine, lengths, mode, backend, low, cap, seed=0):
    """lead_fast's per-token weight for responses of ``lengths`` tokens (flat), the trainer's log-probs given
    as the old policy's (what TRL's ratio uses), through the loss head."""
    if backend == "triton":
        skip_unless_interpreted()
    n = len(train)
    g = torch.Generator().manual_seed(seed)
    hidden, weight = torch.randn(n, 8, generator=g), torch.randn(40, 8, generator=g)
    seq_ids = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    out = grpo_loss(hidden, weight, torch.randint(0, 40, (n,), generator=g), torch.randn(n, generator=g),
                    torch.full((n,), 1.0 / n), old_logprobs=train, rollout_logprobs=engine, seq_ids=seq_ids,
                    rollout_correction=mode, correction_low=low, correction_cap=cap, backend=backend)
    return out.is_weight.double()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_trls_documented_vector(mode, backend):
    """Trainer log-probs [-1, -2], engine [-1.5, -1]: token ratios e^0.5 and e^-1, the response's product e^-0.5;
    TRL's defaults (clip_max 3, no clip_min) keep every one of them, each as it is."""
    train, engine = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    want = trl_is_ratio(train[None], engine[None], torch.ones(1, 2), mode, None, 3.0).expand(1, 2)[0]
    expected = [math.exp(0.5), math.exp(-1.0)] if mode.startswith("token") else [math.exp(-0.5)] * 2
    torch.testing.assert_close(want.double(), torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(lead_fast_weights(train, engine, [2], mode, backend, None, 3.0), want.double(),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("low,cap", [(None, 3.0), (0.5, 2.0), (0.8, 1.25)])
def test_random_responses_of_mixed_lengths_match_trl(mode, low, cap, backend):
    g = torch.Generator().manual_seed(7)
    lengths = [1, 5, 2, 9, 3, 4]
    n = sum(lengths)
    train = -torch.rand(n, generator=g) * 3
    engine = train + 0.8 * torch.randn(n, generator=g)       # ratios on both sides of every bound
    got = lead_fast_weights(train, engine, lengths, mode, backend, low, cap)
    # TRL's layout: one right-padded row per response, padding masked out (NaN there, as vLLM can give)
    B, T = len(lengths), max(lengths)
    pad_train, pad_engine = torch.zeros(B, T), torch.full((B, T), float("nan"))
    mask = torch.zeros(B, T)
    start = 0
    for b, length in enumerate(lengths):
        pad_train[b, :length], pad_engine[b, :length] = train[start:start + length], engine[start:start + length]
        mask[b, :length] = 1
        start += length
    ratio = trl_is_ratio(pad_train, pad_engine, mask, mode, low, cap).expand(B, T)
    want = torch.cat([ratio[b, :length] for b, length in enumerate(lengths)]).double()
    assert (want == 0).any() or mode.endswith("truncate")        # the masks do mask something here
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
