"""The embedded default's model: a tokenizer and a tiny model built locally, then a short supervised
warm start on worked solutions of varying length and quality (GRPO-LEAD's own stage 1 is an SFT too).

Everything is derived from the seed, so every rank could build it; rank 0 builds it once and the others
load the saved directory.
"""

from __future__ import annotations

import json
import os
import random
import time

import torch

from lead_fast.data import TASK_INSTRUCTION, build_prompt, synthetic_corpus, synthetic_problems
from lead_fast.model import build_tiny_model, train_tokenizer

MARKER = "lead_fast_warmstart.json"


def build_embedded_model(out_dir: str, *, steps: int, seed: int, log=print) -> str:
    """Build (or reuse) ``out_dir``: tokenizer + tiny Qwen2-style model after ``steps`` SFT steps."""
    spec = dict(steps=steps, seed=seed, version=1)
    marker = os.path.join(out_dir, MARKER)
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == spec:
                log(f"[warm start] reusing {out_dir}")
                return out_dir
    t0 = time.time()
    tmp = out_dir + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    corpus = synthetic_corpus(20000, seed)
    texts = [f"{p.problem} {TASK_INSTRUCTION}\n{s}" for p, s in corpus]
    tok = train_tokenizer(texts + [p.problem for p in synthetic_problems()], tmp, vocab_size=400)
    model = build_tiny_model(tok, tmp, seed=seed)
    if steps > 0:
        _sft(model, tok, corpus, steps=steps, seed=seed, log=log)
    model.save_pretrained(tmp)
    with open(os.path.join(tmp, MARKER), "w") as f:
        json.dump(spec, f)
    if os.path.exists(out_dir):
        import shutil

        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log(f"[warm start] built {out_dir} ({steps} SFT steps) in {time.time() - t0:.1f}s")
    return out_dir


def _sft(model, tok, corpus, *, steps: int, seed: int, batch: int = 64, lr: float = 3e-3, log=print) -> None:
    """Next-token loss on the solution tokens (and EOS) only."""
    rng = random.Random(seed + 1)
    torch.manual_seed(seed + 1)
    eos = tok.eos_token_id
    examples = []
    for p, sol in corpus:
        prompt = build_prompt(tok, p.problem, TASK_INSTRUCTION, "plain")
        resp = tok(sol, add_special_tokens=False)["input_ids"] + [eos]
        examples.append((prompt, resp))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.1, 1 - s / steps))
    model.train()
    for step in range(steps):
        rows = [examples[rng.randrange(len(examples))] for _ in range(batch)]
        T = max(len(a) + len(b) for a, b in rows)
        ids = torch.full((batch, T), tok.pad_token_id)
        labels = torch.full((batch, T), -100)
        mask = torch.zeros((batch, T), dtype=torch.long)
        for i, (a, b) in enumerate(rows):
            seq = a + b
            ids[i, : len(seq)] = torch.tensor(seq)
            labels[i, len(a): len(seq)] = torch.tensor(b)
            mask[i, : len(seq)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            log(f"[warm start] step {step + 1}/{steps} loss {loss.item():.4f}")
    model.eval()
