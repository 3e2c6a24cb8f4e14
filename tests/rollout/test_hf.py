"""The transformers engine on the tiny demo model: completions, stop strings, weight updates."""

import torch

from lead_fast.model import load_tokenizer
from lead_fast.rollout import SamplingSettings
from lead_fast.rollout.hf import HFEngine


def _engine(model_dir):
    tok = load_tokenizer(model_dir)
    return HFEngine(model_dir, device=torch.device("cpu"), dtype=torch.float32, tokenizer=tok), tok


def test_stop_string_ends_generation_and_is_kept(embedded_model):
    eng, tok = _engine(embedded_model)
    prompt = tok("What is 7 + 8? Put the final answer within \\boxed{}.\n", add_special_tokens=False)["input_ids"]
    greedy = SamplingSettings(n=1, temperature=0, max_new_tokens=40)
    # find a prompt whose greedy answer is long enough to be cut by a stop string
    full = eng.generate([prompt], greedy)[0][0]
    text = tok.decode(full.token_ids, skip_special_tokens=True)
    assert len(full.token_ids) > 4, text
    stop = text[len(text) // 3: len(text) // 3 + 3]           # a piece from inside the greedy text
    cut = eng.generate([prompt], SamplingSettings(n=1, temperature=0, max_new_tokens=40, stop=(stop,)))[0][0]
    cut_text = tok.decode(cut.token_ids, skip_special_tokens=True)
    assert cut.finish_reason == "stop"
    assert stop in cut_text and len(cut.token_ids) < len(full.token_ids)
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)]      # the same tokens, up to the stop
    assert stop not in tok.decode(cut.token_ids[:-1], skip_special_tokens=True)   # cut right after it


def test_length_and_eos_finish_reasons(embedded_model):
    eng, tok = _engine(embedded_model)
    prompt = tok("What is 2 + 3? Put the final answer within \\boxed{}.\n", add_special_tokens=False)["input_ids"]
    out = eng.generate([prompt, prompt], SamplingSettings(n=3, temperature=1.0, max_new_tokens=20, seed=1))
    assert [len(g) for g in out] == [3, 3]
    flat = [c for g in out for c in g]
    assert {c.finish_reason for c in flat} == {"stop", "length"}     # seed 1 gives both: each branch is checked
    for c in flat:
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == tok.eos_token_id and tok.eos_token_id not in c.token_ids[:-1]
        else:
            assert len(c.token_ids) == 20 and tok.eos_token_id not in c.token_ids
    short = eng.generate([prompt], SamplingSettings(n=2, temperature=1.0, max_new_tokens=2, seed=1))[0]
    assert [(c.finish_reason, len(c.token_ids)) for c in short] == [("length", 2)] * 2


def test_update_weights_takes_every_tensor_by_hf_name(embedded_model):
    eng, _ = _engine(embedded_model)
    new = {k: torch.full_like(v, 0.5) for k, v in eng.model.state_dict().items()}
    eng.update_weights(iter(new.items()))
    assert all(torch.equal(v, new[k]) for k, v in eng.model.state_dict().items())


def test_continuous_batching_follows_the_same_stopping_rules(embedded_model):
    """transformers' continuous batching (``generate_batch``) gives the padded ``generate`` path's greedy
    responses, stop string and finish reasons included, and repeats itself for a seed."""
    tok = load_tokenizer(embedded_model)
    kw = dict(device=torch.device("cpu"), dtype=torch.float32, tokenizer=tok)
    padded, paged = HFEngine(embedded_model, **kw), HFEngine(embedded_model, batching="continuous", **kw)
    prompts = [tok(f"What is {a} + {b}? Put the final answer within \\boxed{{}}.\n", add_special_tokens=False)
               ["input_ids"] for a, b in ((7, 8), (12, 30), (5, 5))]
    greedy = SamplingSettings(n=2, temperature=0, max_new_tokens=20)
    want = padded.generate(prompts, greedy)
    text = tok.decode(max((g[0] for g in want), key=lambda c: len(c.token_ids)).token_ids, skip_special_tokens=True)
    for settings in (greedy, SamplingSettings(n=1, temperature=0, max_new_tokens=20, stop=(text[4:7],)),
                     SamplingSettings(n=1, temperature=0, max_new_tokens=3)):
        assert [[(c.token_ids, c.finish_reason) for c in g] for g in paged.generate(prompts, settings)] == \
               [[(c.token_ids, c.finish_reason) for c in g] for g in padded.generate(prompts, settings)], settings
    sampled = SamplingSettings(n=3, temperature=1.0, max_new_tokens=12, seed=4)
    first = paged.generate(prompts, sampled)
    again = paged.generate(prompts, sampled)
    assert [[c.token_ids for c in g] for g in first] == [[c.token_ids for c in g] for g in again]
    assert [len(g) for g in first] == [3, 3, 3]


def test_logprobs_are_the_trainers_at_the_sampling_temperature(embedded_model):
    """Each sampled token's log-prob from generate's processed scores equals the trainer's (the loss head at
    the same temperature), left-padded prompts and responses cut by a stop token included."""
    from lead_fast.model import PolicyWithHead, RowInputs, load_model
    from lead_fast.ops import LossParams, TokenInputs

    tok = load_tokenizer(embedded_model)
    eng = HFEngine(embedded_model, device=torch.device("cpu"), dtype=torch.float32, tokenizer=tok, logprobs=True)
    long = tok("What is 12 + 30? Put the final answer within \\boxed{}.\n", add_special_tokens=False)["input_ids"]
    prompts = [long, long[4:]]                        # different lengths: the shorter one is left-padded
    out = eng.generate(prompts, SamplingSettings(n=3, temperature=0.7, max_new_tokens=20, seed=2))
    policy = PolicyWithHead(load_model(embedded_model, torch.float32, torch.device("cpu")), backend="torch")
    reasons = set()
    for p, group in zip(prompts, out):
        for c in group:
            reasons.add(c.finish_reason)
            assert len(c.logprobs) == len(c.token_ids)
            ids = torch.tensor([p + c.token_ids])
            rows = RowInputs(input_ids=ids, attention_mask=torch.ones_like(ids),
                             hidden_rows=torch.arange(len(p) - 1, len(p) - 1 + len(c.token_ids)))
            with torch.no_grad():
                lp = policy(rows, TokenInputs(targets=torch.tensor(c.token_ids)), LossParams(temperature=0.7),
                            mode="logprobs")
            torch.testing.assert_close(torch.tensor(c.logprobs), lp, rtol=0, atol=1e-4)
    assert reasons == {"stop", "length"}
    assert eng.generate(prompts, SamplingSettings(max_new_tokens=3))[0][0].logprobs is not None
    plain = HFEngine(embedded_model, device=torch.device("cpu"), dtype=torch.float32, tokenizer=tok)
    assert plain.generate(prompts, SamplingSettings(max_new_tokens=3))[0][0].logprobs is None
