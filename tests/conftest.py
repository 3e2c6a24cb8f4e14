import os

# Triton on CPU tensors needs its interpreter, a process-wide choice made before triton is imported. Without
# CUDA it is on, so the real kernel code runs on CPU; on a CUDA machine it stays off, so the GPU tests compile
# and run the kernel and the interpreted ones skip (TRITON_INTERPRET=1 runs those instead, and skips the GPU
# ones). An explicit TRITON_INTERPRET, or LEAD_FAST_NO_INTERPRET=1, decides instead.
if "TRITON_INTERPRET" not in os.environ and os.environ.get("LEAD_FAST_NO_INTERPRET") is None:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

import json  # noqa: E402

import pytest  # noqa: E402

from tests.helpers.launch import DATA_DIR  # noqa: E402


# The files whose tests run longest, started first: pytest-xdist (--dist loadfile) hands out files in
# collection order, so a long file collected last would run alone at the end while the other workers idle.
FIRST = ("tests/core/test_pretrained.py", "tests/core/test_trainer.py", "tests/benchmarks/test_benchmarks.py",
         "tests/core/test_checkpoint.py", "tests/core/test_disaggregated.py", "tests/core/test_user_rewards.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(FIRST)))     # stable: the rest keep order


def pytest_configure(config):
    config.addinivalue_line("markers", "real_vllm: runs vLLM itself (its CPU build); .ci/run selects these in the "
                                       "vLLM environment")


@pytest.fixture(scope="session")
def train_data():
    """The shipped GRPO-LEAD training rows."""
    return json.loads((DATA_DIR / "train_stage2_3.json").read_text())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, train_data):
    """A real model directory: a BPE tokenizer trained on the GRPO-LEAD problems and a random-init
    Qwen2-style model, saved and loaded back by the code under test."""
    from lead_fast.warm_start import build_tiny_model, train_tokenizer

    out = tmp_path_factory.mktemp("tiny_model")
    texts = [r["problem"] for r in train_data[:1500]] + [r.get("solution") or "" for r in train_data[:300]]
    tok = train_tokenizer(texts, str(out), vocab_size=1000)
    build_tiny_model(tok, str(out), hidden=64, layers=2, heads=4, max_positions=1024)
    return str(out)


@pytest.fixture(scope="session")
def tied_model_dir(tmp_path_factory):
    """A model directory whose output head is its input embedding (tie_word_embeddings), with a tokenizer
    that fits the embedded task."""
    from lead_fast.warm_start import build_tiny_model, synthetic_corpus, train_tokenizer

    out = tmp_path_factory.mktemp("tied_model")
    texts = [p.problem + " " + sol for p, sol in synthetic_corpus(400, seed=0)]
    tok = train_tokenizer(texts, str(out), vocab_size=300)
    build_tiny_model(tok, str(out), hidden=64, layers=2, heads=2, max_positions=1024, tie=True)   # head_dim 32: vLLM CPU
    return str(out)


@pytest.fixture(scope="session")
def embedded_model(tmp_path_factory):
    """The embedded task's model after a short warm start (passed with --model). Built once per test run:
    under pytest-xdist the workers share it (the run's base temp, a lock while the first builds it), as
    it costs a minute of CPU and no test writes into it."""
    from filelock import FileLock

    from lead_fast.warm_start import build_embedded_model

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    d = shared / "embedded" / "base_model"
    d.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(d.parent / "build.lock")):
        build_embedded_model(str(d), steps=150, seed=0, log=lambda m: None)   # reused where already built
    return str(d)


@pytest.fixture(scope="session")
def arith_data(tmp_path_factory):
    """The embedded task's problems as a data file (short prompts, inside the embedded model's context)."""
    from lead_fast.task import synthetic_problems

    path = tmp_path_factory.mktemp("arith") / "arith.json"
    path.write_text(json.dumps([{"problem": p.problem, "answer": p.answer} for p in synthetic_problems()[:40]]))
    return str(path)


CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
"""A chat template that renders a user turn as the embedded model's plain prompt ("problem instruction\\n")."""


@pytest.fixture(scope="session")
def chat_model(embedded_model, tmp_path_factory):
    """The embedded model with a chat template (weights linked, not copied): TRL's conversational prompts
    render to the prompts it was warm-started on."""
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("chat_model")
    for name in os.listdir(embedded_model):
        src = os.path.join(embedded_model, name)
        if os.path.isfile(src):
            (d / name).symlink_to(src)
    tok = AutoTokenizer.from_pretrained(embedded_model)
    tok.chat_template = CHAT_TEMPLATE
    for name in os.listdir(d):
        if "token" in name or name.endswith(".jinja"):
            (d / name).unlink()
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def conversational_data(tmp_path_factory):
    """The embedded task in TRL's conversational format: a ``prompt`` of chat messages, the gold answer in
    ``solution`` (TRL's accuracy_reward reads it) and a column of the user's own, ``max_len``."""
    from lead_fast.task import TASK_INSTRUCTION, synthetic_problems

    path = tmp_path_factory.mktemp("conversational") / "conversational.jsonl"
    path.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"{p.problem} {TASK_INSTRUCTION}"}],
                                        "solution": p.answer, "max_len": 64}) + "\n"
                            for p in synthetic_problems()[:120]))
    return str(path)
