"""The loss head (both backends) against float64 autograd of the naive full-logits formula."""

import pytest
import torch
from naive import naive_grpo_loss

from lead_fast.ops import grpo_loss, token_logprobs

BACKENDS = ["torch", "triton"]


def _inputs(N, H, V, *, seed=0, dtype=torch.float64, bias=True, old=True, ref=True, rho=True,
            zero_weights=False, neg_bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=torch.float64)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) / H**0.5
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    if neg_bias:
        b = torch.full((V,), -1000.0, dtype=torch.float64) + torch.randn(V, generator=g, dtype=torch.float64)
    targets = torch.randint(0, V, (N,), generator=g)
    adv = torch.randn(N, generator=g)
    tw = torch.rand(N, generator=g) / N
    if zero_weights:
        tw[::2] = 0.0  # masked tokens
    with torch.no_grad():
        z = hidden @ weight.T + (b if b is not None else 0)
        lp = torch.log_softmax(z, -1).gather(1, targets[:, None]).squeeze(1).float()
    kw = {}
    if old:  # ratios spread across both clip edges
        kw["old_logprobs"] = lp + 0.4 * torch.randn(N, generator=g)
    if ref:
        kw["ref_logprobs"] = lp + 0.5 * torch.randn(N, generator=g)
    if rho:
        kw["correct_ratio"] = torch.rand(N, generator=g)
    to = dict(dtype=dtype)
    return (hidden.to(**to), weight.to(**to), None if b is None else b.to(**to), targets, adv, tw, kw)


def _run(fn, hidden, weight, bias, targets, adv, tw, kw, **opts):
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    b = None if bias is None else bias.clone().requires_grad_(True)
    out = fn(h, w, targets, adv, tw, bias=b, **kw, **opts)
    loss = out[0] if isinstance(out, tuple) else out.loss
    loss.backward()
    return out, h.grad, w.grad, None if b is None else b.grad


def _compare(backend, inp, tol, **opts):
    hidden, weight, bias, targets, adv, tw, kw = inp
    chunk = opts.pop("chunk_size", None)
    ref_out, rgh, rgw, rgb = _run(naive_grpo_loss, hidden.double(), weight.double(),
                                  None if bias is None else bias.double(), targets, adv, tw, kw, **opts)
    out, gh, gw, gb = _run(grpo_loss, hidden, weight, bias, targets, adv, tw, kw, backend=backend,
                           chunk_size=chunk, **opts)
    rloss, rlogp, rent, rkl, rclip = ref_out
    close = dict(rtol=tol, atol=tol)
    torch.testing.assert_close(out.loss.double(), rloss, **close)
    torch.testing.assert_close(out.logprobs.double(), rlogp, **close)
    torch.testing.assert_close(out.entropy.double(), rent, **close)
    torch.testing.assert_close(out.kl.double(), rkl, **close)
    assert out.clipped.dtype == torch.bool
    # a token whose ratio sits within rounding of a clip edge may flip; none do on these seeds
    assert torch.equal(out.clipped, rclip)
    torch.testing.assert_close(gh.double(), rgh, **close)
    torch.testing.assert_close(gw.double(), rgw, **close)
    if bias is not None:
        torch.testing.assert_close(gb.double(), rgb, **close)
    return out


def _skip_no_triton(backend):
    if backend == "triton":
        pytest.importorskip("triton")


# V=256: whole blocks only (the interpreter's BLOCK is 128); V=100: a lone ragged block; the rest both
SHAPES = [(1, 8, 257), (13, 16, 257), (33, 24, 4099), (64, 32, 1000), (5, 8, 256), (7, 8, 100)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N,H,V", SHAPES)
def test_matches_float64_reference(backend, N, H, V):
    _skip_no_triton(backend)
    dtype = torch.float64 if backend == "torch" else torch.float32
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    _compare(backend, _inputs(N, H, V, seed=N + V, dtype=dtype), tol, kl_coef=0.1, entropy_coef=0.01,
             chunk_size=max(1, N // 3))


CASES = [
    dict(opts=dict(), inp=dict(old=False, ref=False, rho=False)),          # on-policy: ratio = 1
    dict(opts=dict(), inp=dict(old=True, ref=False, rho=False)),
    dict(opts=dict(kl_coef=0.5), inp=dict(old=False, ref=True, rho=False)),
    dict(opts=dict(entropy_coef=0.3), inp=dict(old=True, ref=False, rho=True)),
    dict(opts=dict(temperature=0.7, kl_coef=0.05, entropy_coef=0.001), inp=dict()),
    dict(opts=dict(temperature=1.3, clip_low=0.1, clip_high=0.28), inp=dict(bias=False)),
    dict(opts=dict(w_min=0.1, w_max=2.0, midpoint=0.5, steepness=3.0), inp=dict(rho=True)),
    dict(opts=dict(kl_coef=0.1, entropy_coef=0.01), inp=dict(zero_weights=True)),
    # all logits near -1000: float32 logits themselves carry ~1e-4 absolute error there
    dict(opts=dict(kl_coef=0.1, entropy_coef=0.01), inp=dict(neg_bias=True), tol32=5e-4),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_options(backend, case):
    _skip_no_triton(backend)
    dtype = torch.float64 if backend == "torch" else torch.float32
    tol = 1e-9 if dtype == torch.float64 else case.get("tol32", 2e-5)
    _compare(backend, _inputs(21, 16, 517, seed=3, dtype=dtype, **case["inp"]), tol, chunk_size=8, **case["opts"])


def test_zero_weight_tokens_contribute_nothing():
    hidden, weight, bias, targets, adv, tw, kw = _inputs(10, 8, 50, zero_weights=True)
    out, gh, _, _ = _run(grpo_loss, hidden, weight, bias, targets, adv, tw, kw, backend="torch")
    assert torch.all(gh[::2] == 0)
    assert out.loss.item() != 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_independent_of_chunk_size(backend):
    _skip_no_triton(backend)
    inp = _inputs(37, 16, 300, seed=5, dtype=torch.float32)
    hidden, weight, bias, targets, adv, tw, kw = inp
    outs = [_run(grpo_loss, hidden, weight, bias, targets, adv, tw, kw, backend=backend, chunk_size=c,
                 kl_coef=0.1, entropy_coef=0.01) for c in (1, 7, 16, 37, 1000)]
    for o in outs[1:]:
        torch.testing.assert_close(o[0].loss, outs[0][0].loss, rtol=1e-5, atol=1e-6)
        for a, b in zip(o[1:], outs[0][1:]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs(backend, dtype):
    _skip_no_triton(backend)
    hidden, weight, bias, targets, adv, tw, kw = _inputs(24, 32, 700, seed=9, dtype=dtype)
    ref_out, rgh, rgw, rgb = _run(naive_grpo_loss, hidden.double(), weight.double(), bias.double(), targets, adv,
                                  tw, kw, kl_coef=0.1, entropy_coef=0.01)
    out, gh, gw, gb = _run(grpo_loss, hidden, weight, bias, targets, adv, tw, kw, backend=backend, chunk_size=10,
                           kl_coef=0.1, entropy_coef=0.01)
    assert gh.dtype == gw.dtype == gb.dtype == dtype
    torch.testing.assert_close(out.loss.double(), ref_out[0], rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(out.logprobs.double(), ref_out[1], rtol=2e-2, atol=5e-2)
    for got, want in ((gh, rgh), (gw, rgw), (gb, rgb)):
        err = (got.double() - want).norm() / want.norm()
        assert err < 2e-2, err


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N,V", [(1, 257), (19, 4099)])
def test_token_logprobs(backend, N, V):
    _skip_no_triton(backend)
    hidden, weight, bias, targets, *_ = _inputs(N, 12, V, seed=2, dtype=torch.float32)
    for T in (1.0, 0.7):
        z = (hidden.double() @ weight.double().T + bias.double()) / T
        want = torch.log_softmax(z, -1).gather(1, targets[:, None]).squeeze(1)
        want_ent = -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1)
        lp, ent = token_logprobs(hidden, weight, targets, bias=bias, temperature=T, backend=backend,
                                 chunk_size=5, return_entropy=True)
        assert lp.dtype == torch.float32 and lp.shape == (N,) and not lp.requires_grad
        torch.testing.assert_close(lp.double(), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ent.double(), want_ent, rtol=1e-5, atol=1e-5)


def test_default_chunks_fit_the_budget_and_are_even():
    from lead_fast.ops.head import chunk_for_budget

    budget = 1_300_000_000  # the CUDA cap
    for N, V in ((8192, 151936), (16384, 152064)):  # the DESIGN.md shapes, bf16 rows
        assert chunk_for_budget(N, 2 * V, budget) == 4096
    for N in (1, 7, 300, 4095, 4097, 8300, 20000, 100000):
        for per_row in (100, 2 * 151936, 18 * 32000):
            c = chunk_for_budget(N, per_row, budget)
            cap = min(budget // per_row, 8192)
            assert 1 <= c <= max(1, min(cap, N)), (N, per_row, c)
            n = -(-N // c)
            assert n == max(1, -(-N // (cap // 128 * 128 if cap >= 256 else cap))), (N, per_row, c)  # no extra pass
            assert c >= 256 or cap < 256 or c >= N, (N, per_row, c)
    assert chunk_for_budget(10, 2 * 151936, 1000) == 1  # a row larger than the budget still runs


def test_only_hidden_needs_grad():
    hidden, weight, bias, targets, adv, tw, kw = _inputs(9, 8, 40, dtype=torch.float32)
    h = hidden.clone().requires_grad_(True)
    out = grpo_loss(h, weight, targets, adv, tw, bias=bias, backend="torch", **kw)
    out.loss.backward()
    assert h.grad is not None and weight.grad is None


def test_grad_output_scaling():
    hidden, weight, bias, targets, adv, tw, kw = _inputs(9, 8, 40, dtype=torch.float64)
    h = hidden.clone().requires_grad_(True)
    (3.0 * grpo_loss(h, weight, targets, adv, tw, backend="torch", **kw).loss).backward()
    g3 = h.grad.clone()
    h.grad = None
    grpo_loss(h, weight, targets, adv, tw, backend="torch", **kw).loss.backward()
    torch.testing.assert_close(g3, 3.0 * h.grad)


def test_bad_arguments_are_named():
    hidden, weight, bias, targets, adv, tw, kw = _inputs(4, 8, 40, dtype=torch.float32)
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        grpo_loss(hidden, weight, targets, adv, tw, backend="cuda")
    with pytest.raises(ValueError, match="token_weights must be"):
        grpo_loss(hidden, weight, targets, adv, tw[:3], backend="torch")
    with pytest.raises(ValueError, match="weight must be"):
        grpo_loss(hidden, weight[:, :5], targets, adv, tw, backend="torch")
    with pytest.raises(ValueError, match="targets must lie"):
        grpo_loss(hidden, weight, targets + 100, adv, tw, backend="torch")
    with pytest.raises(ValueError, match="kl_coef != 0 needs ref_logprobs"):
        grpo_loss(hidden, weight, targets, adv, tw, kl_coef=0.1, backend="torch")
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(hidden, weight, targets, temperature=0.0)


def test_auto_is_torch_on_cpu():
    from lead_fast.ops import resolve_backend

    assert resolve_backend("auto", torch.device("cpu")) == "torch"


def test_row_block_override(monkeypatch):
    pytest.importorskip("triton")
    from lead_fast.ops.rows_triton import pick_block

    assert pick_block(151936, gpu=True) == (4096, 16)
    monkeypatch.setenv("LEAD_FAST_ROW_BLOCK", "8192x32")
    assert pick_block(151936, gpu=True) == (8192, 32)
    assert pick_block(151936) == (128, 4)  # the interpreter keeps its small blocks
    for bad in ("4096", "3000x16", "4096x3", "axb"):
        monkeypatch.setenv("LEAD_FAST_ROW_BLOCK", bad)
        with pytest.raises(ValueError, match="LEAD_FAST_ROW_BLOCK"):
            pick_block(100, gpu=True)
