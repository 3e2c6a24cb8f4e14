"""An engine in its own process (``EngineProcess``, what a disaggregated rollout rank runs vLLM in), here
around the transformers engine: the same completions as in-process before and after weight syncs, the
child's errors raised here as themselves, a killed child reported (never waited on), a clean close. The
vLLM engine in its own process runs in ``test_vllm_real.py`` (disaggregated training)."""

import os
import signal

import pytest
import torch

from lead_fast.config import RolloutConfig
from lead_fast.model import load_tokenizer
from lead_fast.rollout import SamplingSettings
from lead_fast.rollout.factory import make_engine
from lead_fast.rollout.process import EngineProcess, EngineProcessError


def _make(model_dir, own_process, logprobs=False):
    tok = load_tokenizer(model_dir)
    return make_engine(RolloutConfig(engine="hf", logprobs=logprobs), model_dir, device=torch.device("cpu"),
                       dtype=torch.float32, tokenizer=tok, seed=0, max_model_len=256, own_process=own_process), tok


def _perturbed(model_dir, scale):
    from transformers import AutoModelForCausalLM

    g = torch.Generator().manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return [(n, p.detach() + scale * torch.randn(p.shape, generator=g)) for n, p in model.named_parameters()]


@pytest.fixture(scope="module")
def pair(embedded_model):
    here, tok = _make(embedded_model, False, logprobs=True)
    there, _ = _make(embedded_model, True, logprobs=True)
    assert isinstance(there, EngineProcess)
    yield here, there, tok
    there.close()


def test_same_completions_as_in_process_before_and_after_syncs(pair, embedded_model):
    here, there, tok = pair
    prompts = [tok(f"What is {a} + {b}?", add_special_tokens=False)["input_ids"] for a, b in ((3, 4), (12, 30))]
    settings = SamplingSettings(n=3, temperature=1.0, max_new_tokens=16, seed=5)
    before = there.generate(prompts, settings)
    assert before == here.generate(prompts, settings)
    assert all(c.logprobs is not None and len(c.logprobs) == len(c.token_ids) for g in before for c in g)
    for scale in (0.05, 0.1):    # the first sync shares the buffers, the second refills them
        for engine in (here, there):
            engine.update_weights(iter(_perturbed(embedded_model, scale)))
        after = there.generate(prompts, settings)
        assert after == here.generate(prompts, settings)
        assert after != before


def test_errors_come_back_as_themselves(pair, embedded_model):
    _, there, tok = pair
    with pytest.raises(RuntimeError, match="expected 'model.embed_tokens.weight' at position 0, got 'x'"):
        there.update_weights(iter([("x", torch.zeros(1))]))
    with pytest.raises(AttributeError, match="no attribute .temperature.") as info:
        there.generate([[1, 2, 3]], "not settings")        # raised in the child's generate
    assert any("raised in the hf rollout engine's process" in note for note in info.value.__notes__)
    assert there.generate([], SamplingSettings()) == []   # still serving


def test_an_engine_that_cannot_start_raises_its_error(tmp_path, embedded_model):
    tok = load_tokenizer(embedded_model)
    with pytest.raises(OSError, match=str(tmp_path / "missing")):
        make_engine(RolloutConfig(engine="hf"), str(tmp_path / "missing"), device=torch.device("cpu"),
                    dtype=torch.float32, tokenizer=tok, seed=0, max_model_len=256, own_process=True)


def test_a_killed_engine_is_reported_not_waited_on(embedded_model):
    there, tok = _make(embedded_model, True)
    os.kill(there._proc.pid, signal.SIGKILL)
    with pytest.raises(EngineProcessError, match=r"process was killed by signal 9 .*ran out of memory"):
        there.generate([[1, 2, 3]], SamplingSettings(max_new_tokens=4))
    there.close()
    there.close()      # twice is fine


def test_close_ends_the_process(embedded_model):
    there, _ = _make(embedded_model, True)
    proc = there._proc
    there.close()
    assert not proc.is_alive() and proc.exitcode == 0
