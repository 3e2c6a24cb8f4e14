"""The loss head (both backends) against float64 autograd of the naive full-logits formula."""

import pytest
import torch

from lead_fast.ops import grpo_loss, token_logprobs
from tests.helpers.launch import interpreted, skip_unless_interpreted
from tests.helpers.loss_cases import BACKENDS, CASES, compare, make_inputs, run_loss
from tests.helpers.reference import naive_grpo_loss


def _skip_no_triton(backend):
    if backend == "triton":
        pytest.importorskip("triton")
        skip_unless_interpreted()


# V=256: whole blocks only (the interpreter's BLOCK is 128); V=100: a lone ragged block; the rest both
SHAPES = [(1, 8, 257), (13, 16, 257), (33, 24, 4099), (64, 32, 1000), (5, 8, 256), (7, 8, 100)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N,H,V", SHAPES)
def test_matches_float64_reference(backend, N, H, V):
    _skip_no_triton(backend)
    dtype = torch.float64 if backend == "torch" else torch.float32
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    compare(backend, make_inputs(N, H, V, seed=N + V, dtype=dtype), tol, kl_coef=0.1, entropy_coef=0.01,
             chunk_size=max(1, N // 3))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_options(backend, case):
    _skip_no_triton(backend)
    dtype = torch.float64 if backend == "torch" else torch.float32
    tol = 1e-9 if dtype == torch.float64 else case.get("tol32", 2e-5)
    compare(backend, make_inputs(21, 16, 517, seed=3, dtype=dtype, **case["inp"]), tol, chunk_size=8, **case["opts"])


def test_zero_weight_tokens_contribute_nothing():
    hidden, weight, bias, targets, adv, tw, kw = make_inputs(10, 8, 50, zero_weights=True)
    out, gh, _, _ = run_loss(grpo_loss, hidden, weight, bias, targets, adv, tw, kw, backend="torch")
    assert torch.all(gh[::2] == 0)
    assert out.loss.item() != 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_independent_of_chunk_size(backend):
    _skip_no_triton(backend)
    inp = make_inputs(37, 16, 300, seed=5, dtype=torch.float32)
    hidden, weight, bias, targets, adv, tw, kw = inp
    outs = [run_loss(grpo_loss, hidden, weight, bias, targets, adv, tw, kw, backend=backend, chunk_size=c,
                 kl_coef=0.1, entropy_coef=0.01) for c in (1, 7, 16, 37, 1000)]
    for o in outs[1:]:
        torch.testing.assert_close(o[0].loss, outs[0][0].loss, rtol=1e-5, atol=1e-6)
        for a, b in zip(o[1:], outs[0][1:]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_halfmake_inputs(backend, dtype):
    _skip_no_triton(backend)
    hidden, weight, bias, targets, adv, tw, kw = make_inputs(24, 32, 700, seed=9, dtype=dtype)
    ref_out, rgh, rgw, rgb = run_loss(naive_grpo_loss, hidden.double(), weight.double(), bias.double(), targets, adv,
                                  tw, kw, kl_coef=0.1, entropy_coef=0.01)
    out, gh, gw, gb = run_loss(grpo_loss, hidden, weight, bias, targets, adv, tw, kw, backend=backend, chunk_size=10,
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
    hidden, weight, bias, targets, *_ = make_inputs(N, 12, V, seed=2, dtype=torch.float32)
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
    """Checked against a brute-force search over every chunk size, not the formula: the chunk fits the
    budget (at most 8192 rows, a multiple of 128 from 256 up, or all N rows), takes the fewest passes any
    such chunk takes, and is the smallest such chunk that does (so the passes are as even as they can be)."""
    from lead_fast.ops.head import chunk_for_budget

    budget = 1_300_000_000  # the CUDA cap
    for N, V in ((8192, 151936), (16384, 152064)):  # the Qwen-sized shapes of the benchmark, bf16 rows
        assert chunk_for_budget(N, 2 * V, budget) == 4096
    for N in (1, 7, 300, 4095, 4097, 8300, 20000, 100000):
        for per_row in (100, 2 * 151936, 18 * 32000):
            fits = max(1, min(budget // per_row, 8192))
            allowed = [c for c in range(1, min(fits, N) + 1)
                       if fits < 256 or c % 128 == 0 or c == N]
            fewest = min(-(-N // c) for c in allowed)
            best = min(c for c in allowed if -(-N // c) == fewest)
            assert chunk_for_budget(N, per_row, budget) == best, (N, per_row, best)
    assert chunk_for_budget(10, 2 * 151936, 1000) == 1  # a row larger than the budget still runs


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_frozen_weight_gets_no_gradient_and_the_hidden_one_matches_float64(backend, monkeypatch):
    """A frozen output head (LoRA, a frozen embedding): the weight-gradient GEMM is not run at all (its
    matmul never sees a (V, H) output), and the hidden gradient is still float64's."""
    _skip_no_triton(backend)
    hidden, weight, bias, targets, adv, tw, kw = make_inputs(33, 24, 517, seed=11, dtype=torch.float32)
    ref_h = hidden.double().clone().requires_grad_(True)
    ref = naive_grpo_loss(ref_h, weight.double(), targets, adv, tw, bias=bias.double(), **kw, kl_coef=0.1,
                          entropy_coef=0.01)
    ref[0].backward()
    shapes = []
    matmul = torch.matmul

    def spy(a, b, *, out=None):
        shapes.append(tuple(out.shape) if out is not None else None)
        return matmul(a, b, out=out) if out is not None else matmul(a, b)

    monkeypatch.setattr(torch, "matmul", spy)
    h = hidden.clone().requires_grad_(True)
    out = grpo_loss(h, weight, targets, adv, tw, bias=bias, backend=backend, chunk_size=8, kl_coef=0.1,
                    entropy_coef=0.01, **kw)
    out.loss.backward()
    monkeypatch.undo()
    assert weight.grad is None and bias.grad is None and (517, 24) not in shapes
    assert shapes.count((8, 24)) == 4 and shapes.count((8, 517)) == 4      # per chunk: logits, grad_hidden
    torch.testing.assert_close(out.loss.double(), ref[0], rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(h.grad.double(), ref_h.grad, rtol=2e-5, atol=2e-5)


def test_grad_output_scaling():
    hidden, weight, bias, targets, adv, tw, kw = make_inputs(9, 8, 40, dtype=torch.float64)
    h = hidden.clone().requires_grad_(True)
    (3.0 * grpo_loss(h, weight, targets, adv, tw, backend="torch", **kw).loss).backward()
    g3 = h.grad.clone()
    h.grad = None
    grpo_loss(h, weight, targets, adv, tw, backend="torch", **kw).loss.backward()
    torch.testing.assert_close(g3, 3.0 * h.grad)


def test_second_backward_is_refused_by_name():
    """The gradients are computed in forward and handed to autograd whole by the first backward (no copy)."""
    hidden, weight, bias, targets, adv, tw, kw = make_inputs(9, 8, 40, dtype=torch.float64)
    h = hidden.clone().requires_grad_(True)
    loss = grpo_loss(h, weight, targets, adv, tw, backend="torch", **kw).loss
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="differentiated twice"):
        loss.backward()


def test_bad_arguments_are_named():
    hidden, weight, bias, targets, adv, tw, kw = make_inputs(4, 8, 40, dtype=torch.float32)
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
    if interpreted():
        assert pick_block(151936) == (128, 4)  # the interpreter keeps its small blocks
    for bad in ("4096", "3000x16", "4096x3", "axb"):
        monkeypatch.setenv("LEAD_FAST_ROW_BLOCK", bad)
        with pytest.raises(ValueError, match="LEAD_FAST_ROW_BLOCK"):
            pick_block(100, gpu=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
def test_equal_engine_and_trainer_logprobs_give_exactly_the_uncorrected_loss(backend, mode):
    """With the engine's log-probs equal to the head's own, every weight is exp(0) = 1: the loss, every output
    and every gradient are bit for bit those without a correction."""
    _skip_no_triton(backend)
    hidden, weight, bias, targets, adv, tw, kw = make_inputs(29, 16, 517, seed=11, dtype=torch.float32, old=False,
                                                             rollout=True)
    kw["rollout_logprobs"] = token_logprobs(hidden, weight, targets, bias=bias, temperature=0.9, backend=backend,
                                            chunk_size=8)
    opts = dict(backend=backend, chunk_size=8, temperature=0.9, kl_coef=0.1, entropy_coef=0.01)
    plain = run_loss(grpo_loss, hidden, weight, bias, targets, adv, tw, kw, **opts)
    corrected = run_loss(grpo_loss, hidden, weight, bias, targets, adv, tw, kw, rollout_correction=mode, **opts)
    assert torch.equal(corrected[0].is_weight, torch.ones(29)) and not corrected[0].is_flag.any()
    assert torch.equal(corrected[0].loss, plain[0].loss)
    for a, b in zip(corrected[1:], plain[1:]):
        assert torch.equal(a, b)


def test_correction_inputs_are_named_when_missing():
    hidden, weight, bias, targets, adv, tw, kw = make_inputs(6, 8, 50, old=False, rollout=True)
    with pytest.raises(ValueError, match="rollout_correction='token_truncate' needs rollout_logprobs"):
        grpo_loss(hidden, weight, targets, adv, tw, rollout_correction="token_truncate", backend="torch")
    with pytest.raises(ValueError, match="rollout_correction='sequence_mask' needs seq_ids"):
        grpo_loss(hidden, weight, targets, adv, tw, rollout_logprobs=kw["rollout_logprobs"],
                  rollout_correction="sequence_mask", backend="torch")
    with pytest.raises(ValueError, match="rollout_correction must be one of none, token_truncate"):
        grpo_loss(hidden, weight, targets, adv, tw, rollout_logprobs=kw["rollout_logprobs"],
                  rollout_correction="tis", backend="torch")
