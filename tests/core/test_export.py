"""A checkpoint exported to a Hugging Face model directory: it generates as the trained model did, and never lands on a file or another directory's contents."""

import json
import os

from tests.helpers.launch import HELPERS, check, python, torchrun
from tests.helpers.runs import tiny_args


def test_export_generates_like_the_trained_model(embedded_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "exp"
    res = tmp_path / "greedy.json"
    check(torchrun(2, [str(HELPERS / "train_then_greedy.py"), str(res),
                        *tiny_args(embedded_model, out, "--max-steps", "2")[2:]]))
    check(python(["-m", "lead_fast.export", "--output-dir", str(out), "--out", str(tmp_path / "hf")]))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert any(f.endswith(".safetensors") for f in os.listdir(tmp_path / "hf"))
    want = json.loads(res.read_text())
    base = AutoModelForCausalLM.from_pretrained(embedded_model)
    differs_from_base = False
    for prompt, greedy in zip(want["prompts"], want["greedy"]):
        ids = torch.tensor([prompt])
        got = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
        if tok.eos_token_id in got:
            got = got[: got.index(tok.eos_token_id) + 1]
        assert got == greedy
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), base.named_parameters()):
        differs_from_base |= not torch.equal(p1, p2)
    assert differs_from_base  # the export holds the trained weights, not the base model's


def test_export_onto_a_file_or_a_non_empty_directory(three_steps, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    p = python(["-m", "lead_fast.export", "--output-dir", str(three_steps), "--out", str(f)])
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == f"lead_fast.export: --out {f} is a file; give a directory path"
    d = tmp_path / "full"
    d.mkdir()
    (d / "keep.txt").write_text("mine")
    p = python(["-m", "lead_fast.export", "--output-dir", str(three_steps), "--out", str(d)])
    assert p.returncode == 2 and "is not empty" in p.stderr and (d / "keep.txt").read_text() == "mine"
    check(python(["-m", "lead_fast.export", "--output-dir", str(three_steps), "--out", str(d), "--overwrite"]))
    assert not (d / "keep.txt").exists() and (d / "model.safetensors").exists()
    assert not any(n.startswith(".tmp-export") for n in os.listdir(tmp_path))
