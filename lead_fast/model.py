"""Models: load a local Hugging Face model and tokenizer, build tiny ones, wrap with FSDP2, and run the
backbone + fused loss head in one root forward (so FSDP2 gathers ``lm_head`` for the head).
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from lead_fast.ops import grpo_loss, token_logprobs


class ModelError(ValueError):
    """A model directory that cannot be used; the message says what is missing."""


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
                     max_positions: int = 256, seed: int = 0):
    """A random-init Qwen2-style causal LM sized for CPU tests, saved as a real model directory."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 3,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=max_positions, tie_word_embeddings=False,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=None)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model


def check_model_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise ModelError(f"model directory {path} does not exist")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise ModelError(f"model directory {path} has no config.json: is it a Hugging Face model directory?")
    tok_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any(os.path.exists(os.path.join(path, f)) for f in tok_files):
        raise ModelError(f"model directory {path} has no tokenizer (none of {', '.join(tok_files)})")


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    check_model_dir(path)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.eos_token_id is None:
        raise ModelError(f"the tokenizer in {path} has no EOS token; responses could never end")
    return tok


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def load_model(path: str, dtype: torch.dtype, device: torch.device, attn_implementation: str = "sdpa"):
    from transformers import AutoModelForCausalLM

    check_model_dir(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    return model.to(device)


class PolicyWithHead(nn.Module):
    """A causal LM whose forward ends in the fused loss head, on response positions only.

    Shard this module as the FSDP2 root (its decoder layers as their own units): entering through its
    forward runs the root's hooks, which gather the embedding, final norm and ``lm_head`` weight.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def decoder_layers(self) -> list[nn.Module]:
        return list(self.lm.get_decoder().layers)

    def forward(self, input_ids, attention_mask, positions, targets, mode: str = "loss", **loss_kw):
        """input_ids, attention_mask ``(B, T)``; positions ``(n,)`` flat indices into ``B*T`` of the
        hidden states that predict ``targets (n,)``. ``mode='loss'``: ``grpo_loss`` output;
        ``mode='logprobs'``: ``token_logprobs`` (float32 ``(n,)``)."""
        out = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = out.last_hidden_state                               # (B, T, H)
        h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)   # (n, H)
        head = self.lm.get_output_embeddings()
        bias = getattr(head, "bias", None)
        if mode == "logprobs":
            return token_logprobs(h, head.weight, targets, bias=bias, temperature=loss_kw.get("temperature", 1.0),
                                  backend=loss_kw.get("backend", "auto"), chunk_size=loss_kw.get("chunk_size"))
        return grpo_loss(h, head.weight, targets, bias=bias, **loss_kw)


def shard(policy: PolicyWithHead, device: torch.device, dtype: torch.dtype, activation_checkpointing: bool = False):
    """FSDP2: each decoder layer is a unit, the policy wrapper is the root.

    On CUDA: bf16 compute with fp32 gradient reduction (parameters kept in fp32). On CPU: fp32 throughout.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if activation_checkpointing:
        policy.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mp = None
    if device.type == "cuda" and dtype != torch.float32:
        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    kw = {} if mp is None else {"mp_policy": mp}
    for layer in policy.decoder_layers():
        fully_shard(layer, **kw)
    fully_shard(policy, **kw)
    return policy
