"""The Triton loss head on a GPU at realistic sizes (skipped without CUDA)."""

import os

import pytest
import torch
from lead_fast.ops import grpo_loss, token_logprobs
from tests.helpers.loss_cases import CASES, compare, make_inputs
from tests.helpers.reference import naive_grpo_loss

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") != "0",
    reason="needs CUDA, with TRITON_INTERPRET unset (LEAD_FAST_NO_INTERPRET=1 keeps conftest from setting it)")


def _gpu_inputs(N, H, V, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    hidden = torch.randn(N, H, device="cuda", generator=g).to(dtype)
    weight = (torch.randn(V, H, device="cuda", generator=g) / H**0.5).to(dtype)
    bias = torch.randn(V, device="cuda", generator=g).to(dtype)
    targets = torch.randint(0, V, (N,), device="cuda", generator=g)
    adv = torch.randn(N, device="cuda", generator=g)
    tw = torch.full((N,), 1.0 / N, device="cuda")
    lp = token_logprobs(hidden, weight, targets, bias=bias, backend="torch")
    kw = dict(old_logprobs=lp + 0.3 * torch.randn(N, device="cuda", generator=g),
              ref_logprobs=lp + 0.3 * torch.randn(N, device="cuda", generator=g),
              correct_ratio=torch.rand(N, device="cuda", generator=g))
    return hidden, weight, bias, targets, adv, tw, kw


def _grads(fn, hidden, weight, bias, *args, **kw):
    h, w, b = (t.clone().requires_grad_(True) for t in (hidden, weight, bias))
    out = fn(h, w, *args, bias=b, **kw)
    (out[0] if isinstance(out, tuple) else out.loss).backward()
    return out, h.grad, w.grad, b.grad


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("N,H,V", [(2048, 1024, 151936), (777, 512, 32001)])
def test_triton_vs_float64_reference(dtype, tol, N, H, V):
    hidden, weight, bias, targets, adv, tw, kw = _gpu_inputs(N, H, V, dtype)
    opts = dict(kl_coef=0.05, entropy_coef=0.001, temperature=0.8)
    ref, rgh, rgw, rgb = _grads(naive_grpo_loss, hidden.double(), weight.double(), bias.double(), targets, adv, tw,
                                **kw, **opts)
    out, gh, gw, gb = _grads(grpo_loss, hidden, weight, bias, targets, adv, tw, **kw, backend="triton",
                             chunk_size=1000, **opts)
    torch.testing.assert_close(out.loss.double(), ref[0], rtol=tol, atol=tol * 1e-1)
    torch.testing.assert_close(out.logprobs.double(), ref[1], rtol=tol, atol=tol * 10)
    torch.testing.assert_close(out.entropy.double(), ref[2], rtol=tol, atol=tol * 10)
    for got, want in ((gh, rgh), (gw, rgw), (gb, rgb)):
        err = ((got.double() - want).norm() / want.norm()).item()
        assert err < tol, err


def test_token_logprobs_triton_matches_torch():
    hidden, weight, bias, targets, *_ = _gpu_inputs(4096, 2048, 151936, torch.bfloat16)
    a = token_logprobs(hidden, weight, targets, bias=bias, backend="triton")
    b = token_logprobs(hidden, weight, targets, bias=bias, backend="torch")
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("case", CASES)
def test_every_cpu_case_at_a_larger_shape(case):
    """The interpreter tests' cases (on-policy, KL, entropy, temperatures, clip ranges, weights, masked
    tokens, all-negative logits) with the real kernel at N=1024, H=512, V=32001, float32."""
    *tensors, kw = make_inputs(1024, 512, 32001, seed=3, dtype=torch.float32, **case["inp"])
    tensors = [None if t is None else t.cuda() for t in tensors]
    kw = {k: v.cuda() for k, v in kw.items()}
    compare("triton", (*tensors, kw), max(case.get("tol32", 2e-5), 1e-4), chunk_size=300, **case["opts"])
