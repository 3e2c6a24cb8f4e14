"""Warm starts: supervised steps that give a model something for GRPO-LEAD to improve, built once and cached.

For the embedded task (``What is a + b?`` for ``0 <= a, b < 20``, ``lead_fast.task``) a tokenizer and a tiny
model are built locally. The tokenizer (byte-level BPE, digits split) is
trained on its text; the model is a random-init Qwen2-style causal LM saved as a real model directory;
the warm start (GRPO-LEAD's own stage 1 is an SFT too) teaches it worked solutions of deliberately mixed
length and quality, so GRPO-LEAD has both accuracy and length to win. Everything derives from the seed:
rank 0 builds the directory once and the other ranks load it. For a pretrained model, the format warm-up
(``format_warm_up``) teaches only the boxed answer.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import time

import torch

from lead_fast.data import Problem, build_prompt
from lead_fast.distributed import on_rank0
from lead_fast.model import load_model, load_tokenizer
from lead_fast.task import TASK_INSTRUCTION, mixed_problems, synthetic_problems

SLIP = {"easy": 0.2, "medium": 0.5, "hard": 0.8}
"""The mixed task's warm start: how often a worked solution's answer is off, by level (the warm-started
model then starts with a spread in accuracy by difficulty for the difficulty weight to act on)."""

def synthetic_solution(a: int, b: int, rng: random.Random) -> str:
    """One worked solution, drawn from a deliberately mixed distribution.

    Half are concise (just the boxed answer) and half verbose (restate, compute, check 1-3 times); half
    carry an arithmetic slip (the sum is off by 1 or 10). The warm-started policy therefore answers right
    about half the time and spends many tokens doing it: GRPO-LEAD has both accuracy and length to win.
    """
    s = a + b
    if rng.random() < 0.5:
        s = max(0, s + rng.choice([-10, -1, 1, 10]))
    if rng.random() < 0.5:
        return f"\\boxed{{{s}}}"
    checks = " ".join(f"Check: {s} - {b} = {s - b}." for _ in range(rng.randint(1, 3)))
    return f"We add {a} and {b}. {a} + {b} = {s}. {checks} So the answer is \\boxed{{{s}}}"


def mixed_solution(ops: list[int], level: str, rng: random.Random) -> str:
    """One worked solution of the mixed task: half concise, half adding up step by step and checking once;
    the answer (and the last step with it) is off by 1 or 10 with the level's ``SLIP`` probability."""
    s = sum(ops)
    if rng.random() < SLIP[level]:
        s = max(0, s + rng.choice([-10, -1, 1, 10]))
    if rng.random() < 0.5:
        return f"\\boxed{{{s}}}"
    steps, run = [], ops[0]
    for x in ops[1:-1]:
        steps.append(f"{run} + {x} = {run + x}.")
        run += x
    steps.append(f"{run} + {ops[-1]} = {s}.")
    return f"We add {', '.join(map(str, ops))}. {' '.join(steps)} Check: {s} - {ops[-1]} = {s - ops[-1]}. " \
           f"So the answer is \\boxed{{{s}}}"


def _operands(p: Problem) -> list[int]:
    return [int(x) for x in p.problem[len("What is "):-1].split(" + ")]


def synthetic_corpus(n: int, seed: int, task: str = "sums") -> list[tuple[Problem, str]]:
    """``n`` (problem, worked solution) pairs of the generated task ``task`` (sums or mixed)."""
    rng = random.Random(seed)
    probs = mixed_problems() if task == "mixed" else synthetic_problems()
    out = []
    for _ in range(n):
        p = rng.choice(probs)
        ops = _operands(p)
        out.append((p, mixed_solution(ops, p.columns["level"], rng) if task == "mixed"
                    else synthetic_solution(*ops, rng)))
    return out


def train_tokenizer(texts, out_dir: str, vocab_size: int = 512):
    """A small byte-level BPE tokenizer (digits split one per token) trained on ``texts``; saved to ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model(tokenizer, out_dir: str, *, hidden: int = 128, layers: int = 2, heads: int = 4,
                     max_positions: int = 256, seed: int = 0, tie: bool = False):
    """A random-init Qwen2-style causal LM sized for CPU tests, saved as a real model directory (``tie``:
    the output head is the input embedding, as in Qwen2.5 <= 3B, Llama-3.2 and SmolLM2)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 3,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=max_positions, tie_word_embeddings=tie,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=None)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model


def prepare_model_dir(output_dir: str, *, steps: int, seed: int, source: str | None = None, cache: str = "auto",
                      task: str = "sums", log=print) -> str:
    """Collective: rank 0 builds (or reuses) ``OUTPUT_DIR/base_model``; every rank returns its path.
    ``source`` None: the embedded tiny model after ``steps`` warm-start steps; a model directory: that
    model after ``steps`` steps of the answer-format warm-up (``format_warm_up``). ``cache``: the
    ``run.warm_start_cache`` setting (``cache_dir``); ``task``: the generated task the embedded model learns."""
    path = os.path.join(output_dir, "base_model")

    def build():
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)  # the other ranks wait: give the warm start every core
        try:
            if source is None:
                build_embedded_model(path, steps=steps, seed=seed, cache=cache_dir(cache), task=task, log=log)
            else:
                format_warm_up(source, path, steps=steps, seed=seed, cache=cache_dir(cache), log=log)
        finally:
            torch.set_num_threads(threads)

    on_rank0(build)      # a bad source stops every rank with its message
    return path


MARKER = "lead_fast_warmstart.json"


def cache_dir(setting: str) -> str | None:
    """The directory of finished warm starts for a ``run.warm_start_cache`` setting ("auto", "off" or a path)."""
    if setting == "off":
        return None
    if setting == "auto":
        return os.path.join(os.environ.get("LEAD_FAST_CACHE", os.path.expanduser("~/.cache/lead_fast")), "warm_starts")
    return os.path.abspath(os.path.expanduser(setting))


def _marked(out_dir: str, marker: str, spec: dict) -> bool:
    path = os.path.join(out_dir, marker)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return json.load(f) == spec


def _copy_tree(src: str, dst: str) -> None:
    """``dst`` as a copy of ``src``, written beside it and renamed (files hard-linked where the filesystem
    allows: a warm start is never written to in place, only replaced whole)."""
    tmp = f"{dst}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)

    def link_or_copy(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    try:
        shutil.copytree(src, tmp, copy_function=link_or_copy)
        if os.path.exists(dst):
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _built_once(out_dir: str, marker: str, spec: dict, label: str, build, log, cache: str | None = None) -> str:
    """``out_dir`` as ``build(tmp)`` writes it, unless a marker there already holds ``spec``: built beside it
    and renamed, so an interrupted build (Ctrl-C or an error) leaves no half-built directory behind. With a
    ``cache`` directory, a build is kept there under a name derived from ``spec``, and a later call with the
    same ``spec`` (another run's ``out_dir``) copies it instead of building."""
    if _marked(out_dir, marker, spec):
        log(f"[{label}] reusing {out_dir}")
        return out_dir
    cached = None
    if cache is not None:
        key = hashlib.sha256(json.dumps([marker, spec], sort_keys=True).encode()).hexdigest()[:16]
        cached = os.path.join(cache, f"{label.replace(' ', '_')}-{key}")
        if _marked(cached, marker, spec):
            _copy_tree(cached, out_dir)
            log(f"[{label}] copied from the cache {cached} (--run.warm_start_cache off builds it anew)")
            return out_dir
    t0 = time.time()
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        build(tmp)
        with open(os.path.join(tmp, marker), "w") as f:
            json.dump(spec, f)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log(f"[{label}] built {out_dir} in {time.time() - t0:.1f}s")
    if cached is not None:
        try:
            os.makedirs(cache, exist_ok=True)
            _copy_tree(out_dir, cached)
            log(f"[{label}] kept in the cache {cached}: later runs with the same settings copy it")
        except OSError as e:       # a cache that cannot be written costs the next run a build, nothing more
            log(f"[{label}] WARNING: not cached ({cached}: {e.strerror or e})")
    return out_dir


def build_embedded_model(out_dir: str, *, steps: int, seed: int, cache: str | None = None, task: str = "sums",
                         log=print) -> str:
    """Build (or reuse) ``out_dir``: tokenizer + tiny Qwen2-style model after ``steps`` SFT steps on the
    generated task ``task``."""

    def build(tmp):
        corpus = synthetic_corpus(20000, seed, task)
        texts = [f"{p.problem} {TASK_INSTRUCTION}\n{s}" for p, s in corpus]
        problems = mixed_problems() if task == "mixed" else synthetic_problems()
        tok = train_tokenizer(texts + [p.problem for p in problems], tmp, vocab_size=400)
        model = build_tiny_model(tok, tmp, seed=seed)
        if steps > 0:
            examples = [(build_prompt(tok, p.problem, TASK_INSTRUCTION, "plain"),
                         tok(sol, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]) for p, sol in corpus]
            _sft(model, examples, pad_id=tok.pad_token_id, steps=steps, seed=seed, batch=64, lr=3e-3,
                 schedule=lambda s: min(1.0, (s + 1) / 20) * max(0.1, 1 - s / steps), log=log)
        model.save_pretrained(tmp)

    spec = dict(steps=steps, seed=seed, version=1, **({} if task == "sums" else {"task": task}))
    return _built_once(out_dir, MARKER, spec, "warm start", build, log, cache)


def _sft(model, examples: list[tuple[list[int], list[int]]], *, pad_id: int, steps: int, seed: int, batch: int,
         lr: float, schedule, clip: float = 1.0, label: str = "warm start", log=print) -> None:
    """Next-token loss on the response tokens only, ``examples`` being (prompt ids, response ids with EOS);
    ``schedule(step)`` scales ``lr``."""
    rng = random.Random(seed + 1)
    torch.manual_seed(seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    model.train()
    bar, t0, last_line = None, time.time(), -math.inf
    if sys.stderr.isatty():  # a bar with ETA on a terminal; the log lines below for logs and CI
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=label, unit="step")
    for step in range(steps):
        rows = [examples[rng.randrange(len(examples))] for _ in range(batch)]
        T = max(len(a) + len(b) for a, b in rows)
        ids = torch.full((batch, T), pad_id)
        labels = torch.full((batch, T), -100)
        mask = torch.zeros((batch, T), dtype=torch.long)
        for i, (a, b) in enumerate(rows):
            seq = a + b
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(a): len(seq)] = torch.tensor(b)
            mask[i, : len(seq)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        elif step == 0 or step == steps - 1 or step % max(1, steps // 10) == 0 or time.time() - last_line > 30:
            # at least every tenth of the way and every 30 s, with the time left at this pace
            last_line, spent = time.time(), time.time() - t0
            left = spent / (step + 1) * (steps - step - 1)
            log(f"[{label}] step {step + 1}/{steps} loss {loss.item():.4f} ({spent:.0f} s, ~{left:.0f} s left)")
    if bar is not None:
        bar.close()
    model.eval()


def format_solution(a: int, b: int, rng: random.Random) -> str:
    """A correct worked solution of a one-digit sum in the answer format, half concise and half restated
    and checked once or twice: the warm-up teaches the format (and the box), and leaves length for GRPO-LEAD
    to win."""
    s = a + b
    if rng.random() < 0.5:
        return f"{a} + {b} = {s}. The answer is \\boxed{{{s}}}."
    checks = " ".join(f"Check: {s} - {b} = {a}." for _ in range(rng.randint(1, 2)))
    return f"We add {a} and {b}. {a} + {b} = {s}. {checks} So the answer is \\boxed{{{s}}}."


FORMAT_MARKER = "lead_fast_format_warmup.json"


def format_warm_up(source: str, out_dir: str, *, steps: int, seed: int, batch: int = 16, lr: float = 2e-5,
                   cache: str | None = None, log=print) -> str:
    """Build (or reuse) ``out_dir``: the model in ``source`` after ``steps`` supervised steps on the answer
    format, on the 100 one-digit sums (``format_solution``; the prompt is the task's, through the chat
    template when the tokenizer has one, and the loss covers the response and the EOS that ends it). A
    pretrained chat model answers sums right but chattily and never boxes: this is the short warm-up on
    the format that docs/training.md's smollm2 preset states (measured: benchmarks/smollm2_format_warmup.py)."""

    def build(tmp):
        tok = load_tokenizer(source)
        model = load_model(source, torch.float32, torch.device("cpu"))
        rng = random.Random(seed)
        examples = []
        for a in range(10):
            for b in range(10):
                prompt = build_prompt(tok, f"What is {a} + {b}?", TASK_INSTRUCTION, "auto")
                for _ in range(4):       # four drawn solutions per sum: both styles for each
                    reply = tok(format_solution(a, b, rng), add_special_tokens=False)["input_ids"]
                    examples.append((prompt, reply + [tok.eos_token_id]))
        log(f"[format warm-up] {steps} supervised steps (batch {batch}, lr {lr:g}) on one-digit sums, from {source}")
        _sft(model, examples, pad_id=tok.pad_token_id, steps=steps, seed=seed, batch=batch, lr=lr,
             schedule=lambda s: 1.0, clip=0.0, label="format warm-up", log=log)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if os.path.exists(os.path.join(source, "generation_config.json")):
            shutil.copy(os.path.join(source, "generation_config.json"), tmp)   # every EOS id of the model

    spec = dict(source=os.path.abspath(source), steps=steps, seed=seed, batch=batch, lr=lr, version=1)
    return _built_once(out_dir, FORMAT_MARKER, spec, "format warm-up", build, log, cache)
