"""The vLLM engine against a stand-in for the few vLLM names it uses (vLLM cannot be installed here).

The stand-in records calls and rejects keywords that vLLM's ``SamplingParams`` does not have, so a typo
or a renamed argument fails here rather than on a GPU machine.
"""

import sys
import types

import pytest
import torch

# SamplingParams fields this engine may pass (vLLM's own names).
SAMPLING_FIELDS = {"n", "temperature", "top_p", "min_p", "max_tokens", "seed", "stop", "include_stop_str_in_output"}


class _Out:
    def __init__(self, token_ids, finish_reason):
        self.token_ids, self.finish_reason = token_ids, finish_reason


class _SamplingParams:
    def __init__(self, **kw):
        unknown = set(kw) - SAMPLING_FIELDS
        assert not unknown, f"not a SamplingParams field: {unknown}"
        self.kw = kw


class _LLM:
    instances = []

    def __init__(self, **kw):
        self.kw, self.calls = kw, []
        _LLM.instances.append(self)

    def generate(self, prompts, sp, use_tqdm=False):
        self.calls.append(("generate", sp.kw))
        return [types.SimpleNamespace(outputs=[_Out([5, 6, 7], "stop") for _ in range(sp.kw["n"])]) for _ in prompts]

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags or ())))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))


@pytest.fixture
def engine(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = _LLM, _SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    from lead_fast.rollout.vllm_engine import VLLMEngine

    return VLLMEngine("/models/x", dtype=torch.bfloat16, tokenizer=None, seed=3, max_model_len=2048,
                      gpu_memory_utilization=0.4, bucket_bytes=1 << 20)


def test_stop_strings_reach_sampling_params(engine):
    from lead_fast.rollout import SamplingSettings

    out = engine.generate([[1, 2], [3]], SamplingSettings(n=2, temperature=0.8, max_new_tokens=9, stop=("</think>",)))
    assert [[c.finish_reason for c in g] for g in out] == [["stop", "stop"], ["stop", "stop"]]
    kind, kw = engine.llm.calls[0]
    assert kind == "generate" and kw["stop"] == ["</think>"] and kw["include_stop_str_in_output"] is True
    assert kw["max_tokens"] == 9 and engine.llm.kw["max_model_len"] == 2048
    assert engine.llm.calls[-1] == ("sleep", 1)        # the trainer gets the GPU back after generating


def test_update_weights_wakes_weights_once_and_buckets(engine):
    from lead_fast.rollout import SamplingSettings

    engine.generate([[1]], SamplingSettings(n=1))
    loaded = []
    model = types.SimpleNamespace(load_weights=lambda weights: loaded.append([n for n, _ in weights]))
    engine._model = lambda: model
    tensors = [(f"w{i}", torch.zeros(300, 1000)) for i in range(5)]     # 0.6 MB each in bf16: 2 per bucket
    engine.update_weights(iter(tensors))
    wakes = [c for c in engine.llm.calls if c[0] == "wake_up"]
    assert wakes == [("wake_up", ("weights",))]
    assert loaded == [["w0", "w1"], ["w2", "w3"], ["w4"]]
    engine.generate([[1]], SamplingSettings(n=1))
    assert ("wake_up", ("kv_cache",)) in engine.llm.calls and ("reset_prefix_cache",) in engine.llm.calls
