"""Data loading, prompts and prompt order, the model directory checks, and budgets beyond the model's
context or prompts all over the budget refused before any work."""

import json

import pytest

from lead_fast.data import DataError, load_problems, prompts_for_step, tokenize_prompts
from lead_fast.model import ModelError, load_tokenizer
from tests.helpers.launch import DATA_DIR
from tests.helpers.runs import refused, train


def test_shipped_files_load():
    assert len(load_problems(str(DATA_DIR / "train_stage2_3.json"))) == 3453
    assert len(load_problems(str(DATA_DIR / "aime24.json"))) == 30
    assert len(load_problems(str(DATA_DIR / "combined_27.json"))) == 27   # integer answers become strings


def test_row_without_a_field_names_file_and_row(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": "2+2"}\n')
    with pytest.raises(DataError, match=f"{f}: row 2 has no 'answer' field"):
        load_problems(str(f))
    assert load_problems(str(f), answer_field="problem")[1].answer == "2+2"   # the field can be renamed


def test_empty_unreadable_and_missing_files(tmp_path):
    empty = tmp_path / "e.json"
    empty.write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_problems(str(empty))
    bad = tmp_path / "b.json"
    bad.write_text('[{"problem": ')
    with pytest.raises(DataError, match="is not valid JSON"):
        load_problems(str(bad))
    with pytest.raises(DataError, match="does not exist"):
        load_problems(str(tmp_path / "nope.json"))


def test_model_dir_missing_or_without_tokenizer(tmp_path, embedded_model):
    from pathlib import Path

    with pytest.raises(ModelError, match=f"model directory {tmp_path / 'nomodel'} does not exist"):
        load_tokenizer(str(tmp_path / "nomodel"))
    notok = tmp_path / "notok"
    notok.mkdir()
    (notok / "config.json").write_text((Path(embedded_model) / "config.json").read_text())
    with pytest.raises(ModelError, match="has no tokenizer"):
        load_tokenizer(str(notok))


def test_prompts_too_long_are_skipped_or_refused(embedded_model):
    tok = load_tokenizer(embedded_model)
    problems = load_problems(str(DATA_DIR / "aime24.json"))
    logged = []
    kw = dict(instruction="Answer.", template="plain", what="training", log=logged.append)
    with pytest.raises(DataError, match=r"longer than data.max_prompt_tokens=3 tokens; the longest has \d+: raise the limit"):
        tokenize_prompts(problems, tok, max_tokens=3, **kw)
    lengths = sorted(len(p.ids) for p in tokenize_prompts(problems, tok, max_tokens=10**6, **kw))
    kept = tokenize_prompts(problems, tok, max_tokens=lengths[14], **kw)
    assert 15 <= len(kept) < 30 and all(len(p.ids) <= lengths[14] for p in kept)
    assert logged and f"skipped {30 - len(kept)} of 30 training prompts" in logged[-1]


def test_prompt_order_covers_each_epoch_once_and_splits_ranks():
    n, per_step, world = 10, 4, 2
    steps = [[i for r in range(world) for i in prompts_for_step(n, s, per_step, r, world, seed=3)] for s in range(5)]
    stream = [i for s in steps for i in s]                   # 20 prompts: two epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert stream[:10] != stream[10:]                         # a fresh permutation per epoch
    assert prompts_for_step(n, 0, per_step, 1, world, seed=3) == steps[0][2:]   # rank 1: the second share
    assert prompts_for_step(n, 0, per_step, 0, world, seed=4) != steps[0][:2]   # the seed matters
    assert prompts_for_step(n, 2, 4, 0, 1, seed=3) == stream[8:12]              # same stream, any world size


def test_eval_size_must_leave_training_problems():
    from lead_fast.data import Problem, split_eval

    probs = [Problem(str(i), str(i)) for i in range(10)]
    train, ev = split_eval(probs, 3, seed=0)
    assert len(train) == 7 and len(ev) == 3 and not {p.problem for p in train} & {p.problem for p in ev}
    for bad in (10, 11, 0):
        with pytest.raises(DataError, match=r"must be at least 1 and smaller than the number of problems \(10\)"):
            split_eval(probs, bad, seed=0)


def test_datasets_inputs(tmp_path):
    """save_to_disk directories (a Dataset, a DatasetDict and its splits), a directory of parquet files,
    and a hub name without network: all through datasets, with the same row checks."""
    import datasets

    rows = [{"problem": f"{i} + 1", "answer": str(i + 1)} for i in range(6)]
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "one"))
    assert [p.answer for p in load_problems(str(tmp_path / "one"))] == [str(i + 1) for i in range(6)]
    datasets.DatasetDict(train=ds, test=ds.select(range(2))).save_to_disk(str(tmp_path / "dict"))
    assert len(load_problems(str(tmp_path / "dict"))) == 6
    assert len(load_problems(str(tmp_path / "dict"), split="test")) == 2
    with pytest.raises(DataError, match="has no split 'validation' \\(it has train, test\\)"):
        load_problems(str(tmp_path / "dict"), split="validation")
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train-00000.parquet"))
    assert len(load_problems(str(tmp_path / "pq"))) == 6
    datasets.Dataset.from_list([{"problem": "x", "solution": "y"}]).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match=f"{tmp_path / 'bad'}: row 1 has no 'answer' field"):
        load_problems(str(tmp_path / "bad"))


@pytest.mark.parametrize("fmt", ["json", "jsonl", "parquet", "datasets"])
def test_trl_conversational_rows_from_every_format(tmp_path, chat_model, fmt):
    """TRL's conversational format: the messages rendered by the chat template, every other column kept for the
    reward functions, the gold answer from a renamed field."""
    import datasets

    from lead_fast.model import load_tokenizer

    messages = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"What is {i} + 1?"}]
                for i in range(5)]
    rows = [{"prompt": m, "solution": str(i + 1), "max_len": 10 + i} for i, m in enumerate(messages)]
    ds = datasets.Dataset.from_list(rows)
    path = tmp_path / f"conv.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "parquet":
        ds.to_parquet(str(path))
    else:
        ds.save_to_disk(str(path))
    problems = load_problems(str(path), answer_field="solution")
    assert [p.problem for p in problems] == messages and all(p.trl for p in problems)
    assert [p.answer for p in problems] == ["1", "2", "3", "4", "5"]
    assert [p.columns for p in problems] == [{"solution": str(i + 1), "max_len": 10 + i} for i in range(5)]
    tok = load_tokenizer(chat_model)
    prompts = tokenize_prompts(problems, tok, instruction="Ignored.", template="plain", max_tokens=10**6,
                               what="training")
    for p, m in zip(prompts, messages):   # TRL's rendering whatever data.template says; no instruction added
        assert p.ids == list(tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True)["input_ids"])
        assert tok.decode(p.ids) == f"Be brief.\n{m[1]['content']}\n" and p.shown == m


def test_trl_text_prompts_and_bad_rows(tmp_path, chat_model):
    from lead_fast.model import load_tokenizer

    f = tmp_path / "text.jsonl"
    f.write_text('{"prompt": "What is 2 + 2?", "level": 1}\n')
    (p,) = load_problems(str(f), need_answers=False)     # no gold answer: only the user's rewards can score it
    assert (p.problem, p.answer, p.columns, p.trl) == ("What is 2 + 2?", None, {"level": 1}, True)
    tok = load_tokenizer(chat_model)
    (q,) = tokenize_prompts([p], tok, instruction="Ignored.", template="chat", max_tokens=100, what="training")
    assert q.ids == tok("What is 2 + 2?", add_special_tokens=False)["input_ids"] and q.shown == "What is 2 + 2?"
    with pytest.raises(DataError, match=f"{f}: row 1 has no 'answer' field"):
        load_problems(str(f))
    f.write_text('{"prompt": {"role": "user"}, "answer": "1"}\n')
    with pytest.raises(DataError, match=f"{f}: row 1's 'prompt' is neither text nor a list of chat messages"):
        load_problems(str(f))
    f.write_text('{"question": "What is 2 + 2?", "answer": "4"}\n')
    with pytest.raises(DataError, match=f"{f}: row 1 has neither a 'problem' field .* nor a 'prompt' field .*; "
                                        "its fields: answer, question. Set --data.problem_field"):
        load_problems(str(f))
    assert load_problems(str(f), "question")[0].problem == "What is 2 + 2?"


def test_hub_name_offline_is_one_paragraph(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="is not a local file or directory, and loading it as a Hugging Face hub "
                                        "dataset failed .*Without network access"):
        load_problems("some-org/some-math-set")


def test_budget_beyond_the_models_context_is_refused_before_work(embedded_model, tmp_path):
    """The embedded model has 256 positions: 32 prompt + 300 response tokens do not fit (vLLM would refuse
    to start; transformers would generate past the positions the model knows, silently)."""
    msg = refused(train(embedded_model, tmp_path / "o", "--rollout.max_new_tokens", "300"))
    assert "32 + 300 = 332 tokens, exceeds the model's context of 256 positions" in msg
    assert "--data.max_prompt_tokens or --rollout.max_new_tokens" in msg
    assert not (tmp_path / "o" / "metrics.jsonl").exists()


def test_prompts_all_over_the_budget_name_the_preset_and_the_flag(embedded_model, tmp_path):
    msg = refused(train(embedded_model, tmp_path / "o", "--data.max_prompt_tokens", "4"))
    assert "longer than data.max_prompt_tokens=4 tokens (the tiny preset's value unless you set it)" in msg
    assert "raise the limit with --data.max_prompt_tokens" in msg
