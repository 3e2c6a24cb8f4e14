"""Models: load a local Hugging Face model and tokenizer, wrap with FSDP2, and run the backbone + fused
loss head in one root forward (so FSDP2 gathers ``lm_head`` for the head).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn

from lead_fast.errors import ModelError
from lead_fast.ops import GRPOLossOutput, LossParams, TokenInputs, fused_grpo_loss, token_logprobs


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_model_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise ModelError(f"model directory {path} does not exist")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise ModelError(f"model directory {path} has no config.json: is it a Hugging Face model directory?")
    tok_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any(os.path.exists(os.path.join(path, f)) for f in tok_files):
        raise ModelError(f"model directory {path} has no tokenizer (none of {', '.join(tok_files)})")


def _check_weights_present(path: str) -> None:
    if not any(os.path.exists(os.path.join(path, f)) for f in WEIGHT_FILES):
        raise ModelError(f"model directory {path} has no weights (none of {', '.join(WEIGHT_FILES)})")


def _text_config(path: str):
    """The model's (text) config, or ModelError naming the directory."""
    from transformers import AutoConfig

    check_model_dir(path)
    try:
        cfg = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {os.path.join(path, 'config.json')}: {e}") from None
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def model_vocab_size(path: str) -> int | None:
    """The model's vocabulary size from its config (the rows of its embedding)."""
    return getattr(_text_config(path), "vocab_size", None)


def check_context(path: str, prompt_tokens: int, new_tokens: int, *, flags: str) -> None:
    """Refuse a prompt + response budget beyond the model's positions (``max_position_embeddings``): vLLM
    refuses it at start-up and transformers would generate past what the model was trained on, silently."""
    text = _text_config(path)
    context = getattr(text, "max_position_embeddings", None)
    if context is not None and prompt_tokens + new_tokens > context:
        raise ModelError(
            f"the prompt + response budget, {prompt_tokens} + {new_tokens} = {prompt_tokens + new_tokens} tokens, "
            f"exceeds the model's context of {context} positions (max_position_embeddings in {path}/config.json). "
            f"Lower {flags} so that the two sum to at most {context}.")


def load_tokenizer(path: str, log=None):
    """The model directory's tokenizer, with EOS and pad ids checked against the model's vocabulary
    (a tokenizer whose EOS is not a model token would never let a response end). No pad token: EOS pads
    (said through ``log``; padding is masked by length, so any in-vocabulary id would do)."""
    from transformers import AutoTokenizer

    check_model_dir(path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load the tokenizer in {path}: {e}") from None
    if tok.eos_token_id is None:
        raise ModelError(f"the tokenizer in {path} has no EOS token; responses could never end. Set eos_token in "
                         "its tokenizer_config.json")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
        if log is not None:
            log(f"the tokenizer in {path} has no pad token: padding with its EOS {tok.eos_token!r} (padding is "
                "masked by length; nothing is trained on it)")
    vocab = model_vocab_size(path)
    if vocab is not None:
        bad = {name: i for name, i in (("EOS", tok.eos_token_id), ("pad", tok.pad_token_id)) if not 0 <= i < vocab}
        if bad:
            ids = ", ".join(f"{name} {tok.convert_ids_to_tokens(i)!r} = id {i}" for name, i in bad.items())
            raise ModelError(f"the tokenizer in {path} has {ids}, outside the model's vocabulary of {vocab} "
                             f"tokens (EOS id {tok.eos_token_id}, pad id {tok.pad_token_id}); the tokenizer and the "
                             "model do not belong together")
    return tok


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def load_model(path: str, dtype: torch.dtype, device: torch.device, attn_implementation: str = "sdpa"):
    from transformers import AutoModelForCausalLM

    check_model_dir(path)
    _check_weights_present(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    except Exception as e:  # noqa: BLE001  (safetensors, torch and transformers each raise their own kinds)
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load the weights in {path}: {type(e).__name__}: {cause}") from None
    return model.to(device)


@dataclass(frozen=True)
class RowInputs:
    """What the backbone reads for one micro-batch, and which of its hidden states predict the targets."""

    input_ids: torch.Tensor                    # (B, T); packed: (1, T)
    attention_mask: torch.Tensor | None        # (B, T); shared prompts: (B, 1, T, T) bool; packed: None
    hidden_rows: torch.Tensor                  # (n,) flat indices into the B*T hidden states: those predicting targets
    position_ids: torch.Tensor | None = None   # RoPE positions; packed: (1, T), restarting at 0 per sequence; shared: (B, T)
    seq_lens: tuple[int, ...] | None = None    # packed: the length of each sequence in the row


class PolicyWithHead(nn.Module):
    """A causal LM whose forward ends in the fused loss head, on response positions only.

    Shard this module as the FSDP2 root (its decoder layers as their own units): entering through its
    forward runs the root's hooks, which gather the embedding, final norm and ``lm_head`` weight.
    ``backend`` and ``chunk_size`` are the loss head's (``grpo_loss``), fixed for the run.
    """

    def __init__(self, lm: nn.Module, *, backend: str = "auto", chunk_size: int | None = None):
        super().__init__()
        self.lm = lm
        self.backend, self.chunk_size = backend, chunk_size

    # Parameter names: this module's state-dict keys are the Hugging Face model's, under "lm.".
    @staticmethod
    def hf_name(key: str) -> str:
        """This module's state-dict key -> the Hugging Face model's parameter name."""
        return key.removeprefix("lm.")

    @staticmethod
    def key_for(hf_name: str) -> str:
        """A Hugging Face parameter name -> this module's state-dict key."""
        return f"lm.{hf_name}"

    def hf_named_tensors(self, local: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
        """``(Hugging Face name, full tensor)`` for every entry of the state dict, in a fixed order.

        Collective when sharded: each ``full_tensor()`` all-gathers, so every rank must drain this
        iterator, in step with the others (the rollout engines' ``update_weights`` do). ``local``: each
        rank's own shard instead, the very storage the optimizer updates (no gather, no copy); the whole
        tensor when the policy is unwrapped (one rank, see ``shard``).
        """
        from torch.distributed.tensor import DTensor

        # A tied output head (``lm_head.weight`` *is* ``embed_tokens.weight``) appears twice in the state dict
        # and once among the parameters: send it once, under the embedding's name. Engines tie it again on
        # their side (transformers shares the tensor; vLLM's loader skips ``lm_head`` of a tied model).
        tied = ({n for n, _ in self.named_parameters(remove_duplicate=False)}
                - {n for n, _ in self.named_parameters()})
        for key, t in self.state_dict().items():
            if key not in tied:
                if isinstance(t, DTensor):
                    t = t.to_local() if local else t.full_tensor()
                yield self.hf_name(key), t.detach()

    def decoder_layers(self) -> list[nn.Module]:
        return list(self.lm.get_decoder().layers)

    def forward(self, rows: RowInputs, tokens: TokenInputs, params: LossParams,
                mode: str = "loss") -> GRPOLossOutput | torch.Tensor:
        """The backbone over ``rows``, then the loss head on the hidden states that predict
        ``tokens.targets``. ``mode='loss'``: ``fused_grpo_loss``'s output; ``mode='logprobs'``: the targets'
        log-probs at ``params.temperature`` (float32 ``(n,)``, no graph)."""
        extra = {}
        if rows.seq_lens is not None and self.lm.config._attn_implementation == "flash_attention_2":
            # flash-attn's varlen path: hand it the boundaries so no layer re-derives them
            cu = torch.tensor([0, *rows.seq_lens], device=rows.input_ids.device).cumsum(0).to(torch.int32)
            longest = max(rows.seq_lens)
            extra = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)
        mask = rows.attention_mask
        if mask is not None and mask.dim() == 4 and self.lm.config._attn_implementation == "eager":
            # transformers passes a 4-D mask through as it is; eager attention adds it to the scores
            mask = torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, torch.finfo(torch.float32).min)
        out = self.lm.get_decoder()(input_ids=rows.input_ids, attention_mask=mask,
                                    position_ids=rows.position_ids, use_cache=False, **extra)
        hidden = out.last_hidden_state                               # (B, T, H)
        h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows.hidden_rows)   # (n, H)
        head = self.lm.get_output_embeddings()
        bias = getattr(head, "bias", None)
        if mode == "logprobs":
            return token_logprobs(h, head.weight, tokens.targets, bias=bias, temperature=params.temperature,
                                  backend=self.backend, chunk_size=self.chunk_size)
        return fused_grpo_loss(h, head.weight, tokens, params, bias=bias, backend=self.backend,
                               chunk_size=self.chunk_size)


def apply_liger_kernels(lm: nn.Module, setting: str, device: torch.device, log=None) -> list[str]:
    """Liger-Kernel's RMSNorm and SwiGLU patched into this model instance before sharding (never Liger's
    fused linear cross-entropy: lead_fast's head replaces the LM head). ``setting``: ``auto`` (on when
    liger-kernel is installed and works, and the device is CUDA), ``on``, ``off``. Returns the kernels applied.

    Only this instance changes. Liger's ``apply_liger_kernel_to_<type>`` also replaces the architecture's
    module classes and its rotary function in transformers' modeling module, process-wide, so every model
    built after it (the reference, a transformers rollout engine) would run Liger's kernels too: the module's
    names are put back afterwards. Liger's rope is therefore not used: it exists only as that module-level
    function. ``auto`` goes on without Liger when it does not import or patch, saying why through ``log``."""
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return []
    if device.type != "cuda" and not os.environ.get("TRITON_INTERPRET"):
        raise ModelError(f"model.liger_kernels=on needs CUDA (Liger's kernels are Triton); this run is on "
                         f"{device.type}. Use auto or off")

    def unavailable(why: str) -> list[str]:
        if setting == "on":
            raise ModelError(f"model.liger_kernels=on: {why}; use model.liger_kernels off (or auto)")
        if log is not None:
            log(f"Liger kernels off: {why}")
        return []

    import importlib
    import inspect
    import sys

    model_type = lm.config.model_type
    try:    # the patch functions import lazily: a version mismatch surfaces here, not at the package import
        liger = importlib.import_module("liger_kernel.transformers")
        apply = getattr(liger, f"apply_liger_kernel_to_{model_type}", None)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "liger_kernel":
            return unavailable("liger-kernel is not installed (pip install 'lead_fast[gpu]')")
        return unavailable(f"liger-kernel does not import: {type(e).__name__}: {e}")
    except Exception as e:  # noqa: BLE001  (a broken install raises anything)
        return unavailable(f"liger-kernel does not import: {type(e).__name__}: {e}")
    if apply is None:
        return unavailable(f"liger-kernel has no kernels for model type {model_type!r}")
    wanted = dict(rope=False, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
    params = inspect.signature(apply).parameters
    kwargs = {k: v for k, v in wanted.items() if k in params}
    # transformers' modules of this architecture, as they are now, to put back after the patch
    prefix = f"transformers.models.{model_type}."
    saved = {name: dict(vars(mod)) for name, mod in list(sys.modules.items()) if name.startswith(prefix) and mod}
    try:
        apply(model=lm, **kwargs)
    except Exception as e:  # noqa: BLE001  (Liger's patch code raises whatever the model's layout makes it)
        return unavailable(f"liger-kernel could not patch the {model_type} model: {type(e).__name__}: {e}")
    finally:
        for name, attrs in saved.items():
            mod = sys.modules[name]
            for key in set(vars(mod)) - set(attrs):
                delattr(mod, key)
            for key, value in attrs.items():
                if vars(mod).get(key) is not value:
                    setattr(mod, key, value)
    return [k for k, on in kwargs.items() if on]


def checkpoint_layers(policy: PolicyWithHead) -> None:
    """Activation checkpointing of each decoder layer: its activations are recomputed in the backward
    instead of kept from the forward.

    transformers checkpoints a layer only while that layer is in training mode, and the policy stays in eval
    mode (an RL policy's log-probs must be the ones it samples with: no dropout). So the flag is set on the
    layers themselves, not on their children: checkpointing on, every dropout inside still off."""
    kwargs = {"use_reentrant": False}
    if hasattr(policy.lm, "activation_checkpointing_enable"):    # transformers >= 5.2x; the old name warns there
        policy.lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        policy.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    for layer in policy.decoder_layers():
        layer.training = True


def mixed_precision(dtype: torch.dtype):
    """FSDP2's mixed precision for compute in ``dtype`` (None for float32): parameters gathered in ``dtype``,
    gradients reduced in float32, the float32 master weights untouched.

    The root's inputs stay as they are (``cast_forward_inputs=False``): FSDP2 would otherwise cast every
    floating tensor passed to the root's forward to ``dtype``, walking into dataclasses, so the loss head
    would get bfloat16 copies of the advantages and of the old, reference and rollout log-probs (a log-prob
    near -12 off by up to 0.03, 3 % on an importance ratio). The decoder layers keep the cast: their inputs
    are activations, already in ``dtype``."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if dtype == torch.float32:
        return None
    return (MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32, cast_forward_inputs=False),
            MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32))


def shard(policy: PolicyWithHead, device: torch.device, dtype: torch.dtype, activation_checkpointing: bool = False,
          group=None):
    """FSDP2 over ``group`` (None: every rank): each decoder layer is a unit, the policy wrapper is the root.

    On CUDA: ``dtype`` compute with float32 gradient reduction (``mixed_precision``). On CPU: float32 throughout.

    One rank with nothing to cast is left unwrapped: FSDP2 there shards nothing and only copies (each
    unshard copies every parameter, forward and backward again, and the gradient "reduce-scatter" copies
    every gradient twice). Measured on CPU, a Qwen2.5-0.5B-shaped update: ``aten::copy_`` 8.3 s of 67.6 s.
    """
    import torch.distributed as dist

    if activation_checkpointing:
        checkpoint_layers(policy)
    mp = mixed_precision(dtype) if device.type == "cuda" else None
    if mp is None and (not dist.is_initialized() or dist.get_world_size(group) == 1):
        return policy
    return wrap(policy, device, mp, group)


def wrap(policy: PolicyWithHead, device: torch.device, mp=None, group=None) -> PolicyWithHead:
    """``fully_shard`` each decoder layer, then the root; ``mp``: ``mixed_precision``'s (root, layer) pair."""
    from torch.distributed.fsdp import fully_shard

    root_kw, layer_kw = ({}, {}) if mp is None else ({"mp_policy": mp[0]}, {"mp_policy": mp[1]})
    if group is not None:
        from torch.distributed.device_mesh import DeviceMesh

        mesh = DeviceMesh.from_group(group, device.type)
        root_kw, layer_kw = dict(root_kw, mesh=mesh), dict(layer_kw, mesh=mesh)
    for layer in policy.decoder_layers():
        fully_shard(layer, **layer_kw)
    fully_shard(policy, **root_kw)
    return policy
