"""The vLLM engine against the stand-in of vLLM 0.33.0's API (``tests/standin/vllm``), not vLLM itself.

The stand-in generates with a real transformers model and raises where real vLLM would go silently
wrong, so these tests check the engine's sync sequence, its guards and its sampling arguments.
"""

import json
import random
import shutil
import sys

import pytest
import torch

from lead_fast.model import load_tokenizer
from lead_fast.rollout import SamplingSettings
from lead_fast.rollout.base import make_engine, stop_token_ids
from tests.launch import STANDIN


@pytest.fixture
def vllm(monkeypatch):
    monkeypatch.syspath_prepend(str(STANDIN))
    monkeypatch.setitem(sys.modules, "vllm", None)        # remembers the state before, restored after the test
    del sys.modules["vllm"]
    import vllm

    assert vllm.__file__.startswith(str(STANDIN))
    return vllm


def _engines(model_dir, **kw):
    tok = load_tokenizer(model_dir)
    common = dict(device=torch.device("cpu"), dtype=torch.float32, tokenizer=tok, seed=3, max_model_len=512)
    return make_engine("vllm", model_dir, **common, **kw), make_engine("hf", model_dir, **common), tok


def _hf_tensors(model_dir):
    from transformers import AutoModelForCausalLM

    return list(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).named_parameters())


def _prompt(tok, text):
    return tok(text + " Put the final answer within \\boxed{}.\n", add_special_tokens=False)["input_ids"]


def test_sleeps_after_generate_and_refuses_until_a_complete_sync(vllm, embedded_model):
    from lead_fast.rollout.vllm_engine import WeightsDiscardedError

    eng, _, tok = _engines(embedded_model)
    p = _prompt(tok, "What is 2 + 3?")
    first = eng.generate([p], SamplingSettings(n=2, temperature=0.7, max_new_tokens=16, seed=5))
    assert eng.llm.calls[-1] == ("sleep", 2)           # weights and KV cache discarded, nothing copied to host
    with pytest.raises(WeightsDiscardedError, match="call update_weights"):
        eng.generate([p], SamplingSettings(n=1))
    tensors = _hf_tensors(embedded_model)
    eng.llm.calls.clear()
    with pytest.raises(RuntimeError, match="weight sync incomplete: 1 engine parameters not loaded"):
        eng.update_weights(iter(tensors[:-1]))
    assert eng.llm.calls == [("wake_up", ("weights",)), ("apply_model",), ("wake_up", ("kv_cache",)),
                             ("reset_prefix_cache",)]
    with pytest.raises(WeightsDiscardedError):
        eng.generate([p], SamplingSettings(n=1))
    eng.llm.calls.clear()
    eng.update_weights(iter(tensors))                     # already awake: load and reset only
    assert eng.llm.calls == [("apply_model",), ("reset_prefix_cache",)]
    again = eng.generate([p], SamplingSettings(n=2, temperature=0.7, max_new_tokens=16, seed=5))
    assert [c.token_ids for c in again[0]] == [c.token_ids for c in first[0]]    # same weights, same seed
    assert eng.llm.warnings == []


def test_sync_wakes_weights_once_and_streams_cast_tensors(vllm, embedded_model, monkeypatch):
    eng, _, tok = _engines(embedded_model)
    eng.generate([_prompt(tok, "What is 1 + 1?")], SamplingSettings(max_new_tokens=4))
    seen = []
    real = vllm._WorkerModel.load_weights

    def spy(self, weights):
        assert not isinstance(weights, (list, tuple))      # a generator: no bucket of every tensor at once

        def watch():
            for name, t in weights:
                seen.append((name, t.dtype))
                yield name, t
        return real(self, watch())

    monkeypatch.setattr(vllm._WorkerModel, "load_weights", spy)
    eng.dtype = torch.bfloat16                              # the engine casts to its own dtype as tensors arrive
    eng.llm.calls.clear()
    tensors = _hf_tensors(embedded_model)
    eng.update_weights(t for t in tensors)
    assert [c for c in eng.llm.calls if c[0] == "wake_up"] == [("wake_up", ("weights",)), ("wake_up", ("kv_cache",))]
    assert eng.llm.calls[0] == ("wake_up", ("weights",)) and eng.llm.calls.count(("apply_model",)) == 1
    assert len(seen) == len(tensors) and {d for _, d in seen} == {torch.bfloat16}


def test_stops_like_the_transformers_engine(vllm, embedded_model, tmp_path):
    """Greedy responses of both engines on a model whose generation_config has a second EOS id, with and
    without a stop string: the same tokens and the same finish reasons."""
    model = tmp_path / "m"
    shutil.copytree(embedded_model, model)
    tok = load_tokenizer(str(model))
    prompts = [_prompt(tok, q) for q in ("What is 7 + 8?", "What is 12 - 5?", "What is 3 * 4?")]
    _, hf, _ = _engines(str(model))
    plain = hf.generate(prompts, SamplingSettings(n=1, temperature=0, max_new_tokens=24))
    second_eos = plain[0][0].token_ids[2]                   # a token the model does emit
    gen = json.loads((model / "generation_config.json").read_text())
    gen["eos_token_id"] = [tok.eos_token_id, second_eos]
    (model / "generation_config.json").write_text(json.dumps(gen))
    assert stop_token_ids(str(model), tok) == (tok.eos_token_id, second_eos)

    eng, hf, _ = _engines(str(model))
    longest = max((g[0] for g in hf.generate(prompts, SamplingSettings(temperature=0, max_new_tokens=24))),
                  key=lambda c: len(c.token_ids))
    text = tok.decode(longest.token_ids, skip_special_tokens=True)
    stop = text[len(text) // 3: len(text) // 3 + 3]        # a piece from inside a greedy response
    results = []
    for settings in (SamplingSettings(n=3, temperature=0, max_new_tokens=24),
                     SamplingSettings(n=2, temperature=0, max_new_tokens=24, stop=(stop,)),
                     SamplingSettings(n=1, temperature=0, max_new_tokens=2)):
        eng.update_weights(iter(_hf_tensors(str(model))))
        got, want = eng.generate(prompts, settings), hf.generate(prompts, settings)
        assert [[(c.token_ids, c.finish_reason) for c in g] for g in got] == \
               [[(c.token_ids, c.finish_reason) for c in g] for g in want], settings
        results.append(got)
    # the second EOS ended prompt 0's response; the stop string and the length cut-off did their part
    assert results[0][0][0].token_ids[-1] == second_eos and results[0][0][0].finish_reason == "stop"
    assert any(stop in tok.decode(c.token_ids) for g in results[1] for c in g)
    assert results[2][0][0].finish_reason == "length" and len(results[2][0][0].token_ids) == 2
    params = [c[1] for c in eng.llm.calls if c[0] == "generate"][-1]
    assert params[0].detokenize is False and params[0].stop_token_ids == [tok.eos_token_id, second_eos]


def test_seeds_are_spaced_by_n_and_greedy_repeats_prompts(vllm, embedded_model):
    eng, _, tok = _engines(embedded_model)
    prompts = [_prompt(tok, "What is 2 + 2?"), _prompt(tok, "What is 5 + 1?"), _prompt(tok, "What is 9 - 3?")]
    out = eng.generate(prompts, SamplingSettings(n=4, temperature=1.0, max_new_tokens=8, seed=100))
    params = [c[1] for c in eng.llm.calls if c[0] == "generate"][-1]
    assert [(sp.seed, sp.n) for sp in params] == [(100, 4), (104, 4), (108, 4)]
    child_seeds = [sp.seed + i for sp in params for i in range(sp.n)]    # vLLM's ParentRequest
    assert len(set(child_seeds)) == 12
    assert [len(g) for g in out] == [4, 4, 4]
    eng.update_weights(iter(_hf_tensors(embedded_model)))
    greedy = eng.generate(prompts[:2], SamplingSettings(n=3, temperature=0, max_new_tokens=8))
    params = [c[1] for c in eng.llm.calls if c[0] == "generate"][-1]
    assert len(params) == 6 and {sp.n for sp in params} == {1}   # vLLM refuses greedy n > 1
    assert all(len({tuple(c.token_ids) for c in g}) == 1 and len(g) == 3 for g in greedy)


def test_engine_leaves_rng_and_threads_alone(vllm, embedded_model):
    random.seed(11)
    torch.manual_seed(12)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    expect_py, expect_torch = random.Random(11).random(), torch.Generator().manual_seed(12)
    try:
        eng, _, tok = _engines(embedded_model)           # the stand-in, like vLLM, seeds and sets 1 thread
        eng.generate([_prompt(tok, "What is 4 + 4?")], SamplingSettings(n=2, temperature=1.0, max_new_tokens=4))
        assert torch.get_num_threads() == 2
        assert random.random() == expect_py
        assert torch.equal(torch.rand(3), torch.rand(3, generator=expect_torch))
    finally:
        torch.set_num_threads(threads)


def test_logprobs_are_the_processed_distribution(vllm, embedded_model):
    eng, _, tok = _engines(embedded_model, logprobs=True)
    p = _prompt(tok, "What is 6 + 2?")
    c = eng.generate([p], SamplingSettings(n=1, temperature=0.7, max_new_tokens=12, seed=2))[0][0]
    assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(embedded_model, dtype=torch.float32)
    with torch.no_grad():
        logits = m(torch.tensor([p + c.token_ids])).logits[0, len(p) - 1:-1]
    want = torch.log_softmax(logits / 0.7, -1).gather(1, torch.tensor(c.token_ids)[:, None])[:, 0]
    assert torch.allclose(torch.tensor(c.logprobs), want, atol=1e-4)


def test_version_outside_the_range_warns(vllm, embedded_model, monkeypatch):
    from lead_fast.rollout.vllm_engine import check_version

    assert check_version("0.33.2") is None
    msg = check_version("0.35.0")
    assert "vLLM 0.35.0 is installed" in msg and "written for vLLM 0.33.0" in msg
    monkeypatch.setattr(vllm, "__version__", "0.32.1")
    with pytest.warns(UserWarning, match="vLLM 0.32.1 is installed.*0.33.0"):
        _engines(embedded_model)


def test_missing_vllm_is_one_paragraph(monkeypatch, embedded_model):
    from lead_fast.config import ConfigError

    monkeypatch.setitem(sys.modules, "vllm", None)        # import vllm raises ImportError
    with pytest.raises(ConfigError, match=r"needs vLLM.*lead_fast\[gpu\].*--rollout.engine hf"):
        _engines(embedded_model)


def test_eval_engine_does_not_sleep(vllm, embedded_model):
    eng, _, tok = _engines(embedded_model, colocated=False)
    for _ in range(2):
        eng.generate([_prompt(tok, "What is 1 + 2?")], SamplingSettings(max_new_tokens=4))
    assert not any(c[0] == "sleep" for c in eng.llm.calls) and eng.llm.warnings == []
