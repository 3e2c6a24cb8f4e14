"""Model directories and the policy: bad weights and tokenizers refused by name, Liger kernels patched into
the instance only, FSDP2's mixed precision keeping the head's inputs float32, and tied embeddings (the
output head *is* the input embedding, as in Qwen2.5 <= 3B, Llama-3.2 1B/3B and SmolLM2) through every
stage: the loss head's gradient, FSDP2 sharding, weight sync into the transformers engine, checkpoint and
exact resume, export and the eval command. vLLM's side of the tied sync is in
``tests/rollout/test_vllm_real.py`` (real vLLM's CPU build)."""

import json
import shutil

import pytest
import torch

from lead_fast.config import RolloutConfig
from lead_fast.model import PolicyWithHead, RowInputs, load_model, load_tokenizer
from lead_fast.ops import LossParams, TokenInputs
from lead_fast.rollout import SamplingSettings, make_engine
from tests.helpers import compare, runs
from tests.helpers.launch import HELPERS, TRAIN_DATA, check, python, skip_unless_interpreted, torchrun
from tests.helpers.runs import RUN, refused, train

# A random-init model answers nothing right, so every group would be dropped and nothing trained: keep them
# and give the entropy bonus weight, so that every step moves the (shared) weights.
TIED_RUN = [*RUN, "--data.max_prompt_tokens", "64", "--algo.drop_no_signal", "false", "--algo.entropy_coef", "0.01"]


def test_sync_sends_the_shared_weight_once_and_the_engine_ties_it(tied_model_dir):
    lm = load_model(tied_model_dir, torch.float32, torch.device("cpu"))
    assert lm.lm_head.weight is lm.model.embed_tokens.weight
    names = [n for n, _ in PolicyWithHead(lm).hf_named_tensors()]
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    tok = load_tokenizer(tied_model_dir)
    eng = make_engine(RolloutConfig(engine="hf"), tied_model_dir, device=torch.device("cpu"), dtype=torch.float32,
                      tokenizer=tok, seed=0, max_model_len=128)
    with torch.no_grad():
        lm.model.embed_tokens.weight.add_(0.5)
    eng.update_weights(PolicyWithHead(lm).hf_named_tensors())
    assert eng.model.lm_head.weight is eng.model.model.embed_tokens.weight
    assert torch.equal(eng.model.lm_head.weight, lm.lm_head.weight)
    eng.generate([tok("What is 1 + 2?")["input_ids"]], SamplingSettings(max_new_tokens=4))


def test_engine_sharing_the_policys_weights_sees_its_in_place_updates(tied_model_dir):
    """One colocated rank: the transformers engine takes the policy's tensors themselves (the tied head too),
    so an in-place change (an optimizer step) is the engine's without a sync; a tensor of another dtype is
    refused by name."""
    lm = load_model(tied_model_dir, torch.float32, torch.device("cpu"))
    tok = load_tokenizer(tied_model_dir)
    eng = make_engine(RolloutConfig(engine="hf"), tied_model_dir, device=torch.device("cpu"), dtype=torch.float32,
                      tokenizer=tok, seed=0, max_model_len=128)
    eng.share_weights(PolicyWithHead(lm).hf_named_tensors(local=True))
    with torch.no_grad():
        lm.model.embed_tokens.weight.mul_(1.5)
        lm.model.layers[0].mlp.up_proj.weight.add_(0.25)
    assert eng.model.lm_head.weight is eng.model.model.embed_tokens.weight
    assert eng.model.model.embed_tokens.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    for name, t in PolicyWithHead(lm).hf_named_tensors():
        assert torch.equal(eng.model.get_parameter(name), t), name
    eng.update_weights(PolicyWithHead(lm).hf_named_tensors())       # the same storage: nothing to copy
    prompt = tok("What is 1 + 2?")["input_ids"]
    got = eng.generate([prompt], SamplingSettings(max_new_tokens=4))
    own = make_engine(RolloutConfig(engine="hf"), tied_model_dir, device=torch.device("cpu"), dtype=torch.float32,
                      tokenizer=tok, seed=0, max_model_len=128)
    own.update_weights(PolicyWithHead(lm).hf_named_tensors())
    assert own.generate([prompt], SamplingSettings(max_new_tokens=4)) == got
    with pytest.raises(ValueError, match="model.embed_tokens.weight: engine .*float32 .*cannot share the "
                                         "trainer's .*float64"):
        eng.share_weights([("model.embed_tokens.weight", lm.model.embed_tokens.weight.detach().double())])


def test_loss_head_gradient_reaches_the_shared_weight_once(tied_model_dir):
    """The tied weight's gradient is the embedding's plus the head's, each counted once: equal to an untied
    copy's two gradients summed, in float64."""
    tied = load_model(tied_model_dir, torch.float64, torch.device("cpu"))
    untied = load_model(tied_model_dir, torch.float64, torch.device("cpu"))
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    g = torch.Generator().manual_seed(0)
    V = tied.config.vocab_size
    ids = torch.randint(2, V, (1, 12), generator=g)
    rows = RowInputs(input_ids=ids, attention_mask=torch.ones_like(ids), hidden_rows=torch.arange(4, 11))
    tokens = TokenInputs(targets=ids[0, 5:12], advantages=torch.randn(7, generator=g, dtype=torch.float64),
                         token_weights=torch.full((7,), 1 / 7, dtype=torch.float64))
    for lm in (tied, untied):
        for _ in range(2):       # two micro-batches: the second adds into the first's gradient
            out = PolicyWithHead(lm, backend="torch")(rows, tokens, LossParams())
            out.loss.backward()
    want = untied.model.embed_tokens.weight.grad + untied.lm_head.weight.grad
    torch.testing.assert_close(tied.model.embed_tokens.weight.grad, want, rtol=1e-10, atol=1e-12)
    assert untied.lm_head.weight.grad.abs().sum() > 0 and untied.model.embed_tokens.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("world", [1, 2])
def test_fsdp2_keeps_one_shared_parameter_and_syncs_it(tied_model_dir, tmp_path, world):
    check(torchrun(world, [str(HELPERS / "dist_update.py"), tied_model_dir, str(TRAIN_DATA), str(tmp_path / "r.json")]))
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["tied_after_sharding"] and r["sync_exact"] and r["grad_norm"] > 0, r
    assert r["tensors"] == r["engine_tensors"] - 1          # lm_head.weight: the engine's own, tied
    assert r["fsdp_wrapped"] == (world == 2), r      # one rank: no FSDP2 (it would only copy); two: sharded


def test_train_resume_export_and_eval_keep_the_tie(tied_model_dir, arith_data, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out, ref = tmp_path / "run", tmp_path / "ref"
    check(python(["-m", "lead_fast.train", "--preset", "tiny",
                  "--model", tied_model_dir, "--output-dir", str(ref), *TIED_RUN,
                  "--max-steps", "3"]))
    check(python(["-m", "lead_fast.train", "--preset", "tiny",
                  "--model", tied_model_dir, "--output-dir", str(out), *TIED_RUN,
                  "--max-steps", "2", "--save-every", "1"]))
    check(python(["-m", "lead_fast.train", "--preset", "tiny",
                  "--model", tied_model_dir, "--output-dir", str(out), *TIED_RUN,
                  "--max-steps", "3", "--resume"]))
    # the resumed run is the unbroken one: every logged value, and the step-3 checkpoints tensor for tensor
    # (the tied weight, AdamW's moments and steps after the restored optimizer's update, scheduler, RNG)
    rows, want = runs.rows(out), runs.rows(ref)
    compare.assert_same_rows(rows, want)
    assert all(r["grad_norm"] > 0 for r in rows if r["step"] > 0)
    step3 = "checkpoints/step-00000003"
    assert compare.assert_same_checkpoint(out / step3, ref / step3) > 10
    check(python(["-m", "lead_fast.export", "--output-dir", str(out), "--out", str(tmp_path / "exp")]))
    cfg = json.loads((tmp_path / "exp" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "exp", dtype=torch.float32)
    assert exported.lm_head.weight is exported.model.embed_tokens.weight
    base = load_file(f"{tied_model_dir}/model.safetensors")
    assert not torch.equal(exported.model.embed_tokens.weight, base["model.embed_tokens.weight"])   # trained
    check(python(["-m", "lead_fast.eval", "--model", str(tmp_path / "exp"), "--data", arith_data, "--output-dir",
                  str(tmp_path / "ev"), "--n", "2", "--max-new-tokens", "8", "--limit", "3"]))
    assert json.loads((tmp_path / "ev" / "summary.json").read_text())["problems"] == 3


def test_model_dir_without_weights_or_with_corrupt_weights(embedded_model, tmp_path):
    import torch

    from lead_fast.model import ModelError, load_model

    bad = tmp_path / "m"
    shutil.copytree(embedded_model, bad)
    weights = bad / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match=f"cannot load the weights in {bad}"):
        load_model(str(bad), torch.float32, torch.device("cpu"))
    weights.unlink()
    with pytest.raises(ModelError, match=f"model directory {bad} has no weights"):
        load_model(str(bad), torch.float32, torch.device("cpu"))
    msg = refused(train(str(bad), tmp_path / "o", "--max-steps", "1"))
    assert "has no weights" in msg


def test_tokenizer_whose_eos_is_not_a_model_token(embedded_model, tmp_path):
    from lead_fast.model import ModelError, load_tokenizer

    bad = tmp_path / "m"
    shutil.copytree(embedded_model, bad)
    cfg = json.loads((bad / "tokenizer_config.json").read_text())
    cfg["eos_token"] = "</s>"   # not in the vocabulary: transformers adds it with an id past the model's
    (bad / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"EOS '</s>' = id \d+, outside the model's vocabulary of \d+ tokens"):
        load_tokenizer(str(bad))
    # no eos_token at all: transformers 5 substitutes '<|endoftext|>' as a new token past the model's vocabulary
    cfg.pop("eos_token")
    (bad / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="has no EOS token|outside the model's vocabulary"):
        load_tokenizer(str(bad))


def test_liger_kernels_are_patched_in_only_where_asked(tiny_model_dir):
    """Liger's kernels go into the one model instance asked for; transformers' Qwen2 module (its classes,
    its rotary function) is as it was, so a model built afterwards (the reference, a rollout engine) runs
    transformers' own code and gives transformers' outputs."""
    import transformers.models.qwen2.modeling_qwen2 as qwen2

    from lead_fast.model import apply_liger_kernels, load_model

    before = dict(vars(qwen2))
    lm = load_model(tiny_model_dir, torch.float32, torch.device("cpu"))
    ids = torch.arange(2, 40).reshape(2, 19)
    with torch.no_grad():
        expected = load_model(tiny_model_dir, torch.float32, torch.device("cpu"))(ids).logits
    assert apply_liger_kernels(lm, "auto", torch.device("cpu")) == []          # CPU: off
    assert "Liger" not in type(lm.model.layers[0].mlp).forward.__qualname__
    # with Triton's interpreter on, "on" can patch a CPU model here (it does not run it)
    skip_unless_interpreted()
    assert apply_liger_kernels(lm, "on", torch.device("cpu")) == ["rms_norm", "swiglu"]
    assert lm.model.norm.forward.__qualname__.startswith("LigerRMSNorm")
    assert lm.model.layers[0].mlp.forward.__qualname__.startswith("LigerSwiGLUMLP")
    assert lm.lm_head.forward.__qualname__.startswith("Linear")              # the head is ours, not Liger's
    changed = sorted(k for k in set(before) | set(vars(qwen2)) if vars(qwen2).get(k) is not before.get(k))
    assert changed == [], changed
    later = load_model(tiny_model_dir, torch.float32, torch.device("cpu"))
    assert not any("Liger" in type(m).__name__ or "forward" in vars(m) for m in later.modules())
    with torch.no_grad():
        torch.testing.assert_close(later(ids).logits, expected, rtol=0, atol=0)


def test_liger_failing_to_import_or_patch_is_one_line_and_auto_goes_on(tiny_model_dir, monkeypatch):
    """liger-kernel imports its patch functions lazily, so a version mismatch with transformers surfaces only
    when one is looked up, or inside it: ``auto`` says why in one line and trains without Liger, ``on``
    refuses in one paragraph. (A device of type cuda is only named here, nothing runs on it.)"""
    import liger_kernel.transformers as liger

    from lead_fast.errors import ModelError
    from lead_fast.model import apply_liger_kernels, load_model

    lm = load_model(tiny_model_dir, torch.float32, torch.device("cpu"))
    cuda = torch.device("cuda")

    def lazy_import_fails(name):
        raise ImportError("cannot import name 'Qwen2Model' from 'transformers.models.qwen2.modeling_qwen2'")

    if "apply_liger_kernel_to_qwen2" in vars(liger):      # looked up (and so cached) by an earlier test
        monkeypatch.delattr(liger, "apply_liger_kernel_to_qwen2")
    monkeypatch.setattr(liger, "__getattr__", lazy_import_fails, raising=False)
    lines = []
    assert apply_liger_kernels(lm, "auto", cuda, log=lines.append) == []
    assert lines == ["Liger kernels off: liger-kernel does not import: ImportError: cannot import name 'Qwen2Model' "
                     "from 'transformers.models.qwen2.modeling_qwen2'"]
    with pytest.raises(ModelError, match=r"^model.liger_kernels=on: liger-kernel does not import: ImportError"):
        apply_liger_kernels(lm, "on", cuda)

    def patch_fails(**kw):
        raise AttributeError("'Qwen2Model' object has no attribute 'norm'")

    monkeypatch.setitem(vars(liger), "apply_liger_kernel_to_qwen2", patch_fails)
    lines.clear()
    assert apply_liger_kernels(lm, "auto", cuda, log=lines.append) == []
    assert lines == ["Liger kernels off: liger-kernel could not patch the qwen2 model: AttributeError: 'Qwen2Model' "
                     "object has no attribute 'norm'"]
    assert "forward" not in vars(lm.model.norm)


@pytest.mark.parametrize("policy", ["lead_fast", "fsdp2_default"])
def test_fsdp2_mixed_precision_keeps_the_heads_inputs_float32(tied_model_dir, tmp_path, policy):
    """FSDP2 with bfloat16 parameters (gloo on CPU, one rank): the loss head gets bfloat16 hidden states and
    weight, and the per-token inputs (advantages, weights, old / reference log-probs, correct ratios) in
    float32. FSDP2's default policy casts every float tensor passed to the root's forward, dataclass fields
    included: the negative control shows that this test sees it."""
    from tests.helpers.launch import HELPERS, check, torchrun

    out = tmp_path / "dtypes.json"
    check(torchrun(1, [str(HELPERS / "mixed_precision_inputs.py"), tied_model_dir, str(out),
                       "fixed" if policy == "lead_fast" else "default"], timeout=300))
    seen = json.loads(out.read_text())
    assert seen["hidden"] == seen["weight"] == "torch.bfloat16" and seen["param_dtype"] == "torch.float32"
    assert seen["loss_finite"]
    per_token = {k: seen[k] for k in ("advantages", "token_weights", "old_logprobs", "ref_logprobs", "correct_ratio")}
    want = "torch.float32" if policy == "lead_fast" else "torch.bfloat16"
    assert set(per_token.values()) == {want}, per_token
