"""GPT-2 checkpoints (`model_type: gpt2`) <-> `plmkit.models.gpt`.

Hugging Face's GPT-2 keeps OpenAI's layout: `Conv1D` layers that store weights as (in, out), the
transpose of `nn.Linear`, and one fused `c_attn` projection for queries, keys and values, which
plmkit splits into q_proj/k_proj/v_proj so PEFT targets work the same on every family.

`GPT2ForSequenceClassification` with one label (a reward model: `score`, no bias, read at the last
non-pad token) is a `TaskModel(GPT2Model, ScalarHead)`.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from plmkit.errors import CheckpointError
from plmkit.interop.convert import KeyMap, load_checked
from plmkit.models.gpt import GPT2Config, GPT2Model, gpt2_lm
from plmkit.models.heads import ScalarHead, TaskModel

MODEL_TYPES = ("gpt2",)

KEY_MAP = KeyMap({
    "wte.weight": "embed_tokens.weight",
    "wpe.weight": "embed_positions.weight",
    "h.{}.ln_1.weight": "layers.{}.attn_norm.weight",
    "h.{}.ln_1.bias": "layers.{}.attn_norm.bias",
    "h.{}.attn.c_proj.weight": "layers.{}.attn.o_proj.weight",
    "h.{}.attn.c_proj.bias": "layers.{}.attn.o_proj.bias",
    "h.{}.ln_2.weight": "layers.{}.mlp_norm.weight",
    "h.{}.ln_2.bias": "layers.{}.mlp_norm.bias",
    "h.{}.mlp.c_fc.weight": "layers.{}.mlp.up_proj.weight",
    "h.{}.mlp.c_fc.bias": "layers.{}.mlp.up_proj.bias",
    "h.{}.mlp.c_proj.weight": "layers.{}.mlp.down_proj.weight",
    "h.{}.mlp.c_proj.bias": "layers.{}.mlp.down_proj.bias",
    "ln_f.weight": "norm.weight",
    "ln_f.bias": "norm.bias",
})
# The fused projection splits into three: h.{i}.attn.c_attn.* -> layers.{i}.attn.{q,k,v}_proj.*
FUSED_QKV = re.compile(r"^h\.(\d+)\.attn\.c_attn\.(weight|bias)$")
# Causal-mask buffers that old checkpoints store; they carry no weights.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def config_from_hf(hf: dict) -> GPT2Config:
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise CheckpointError(f"config.json: activation_function {act!r} is not supported for gpt2")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag):
            raise CheckpointError(f"config.json: {flag}=true is not supported for gpt2")
    if hf.get("scale_attn_weights") is False:
        raise CheckpointError("config.json: scale_attn_weights=false is not supported for gpt2")
    return GPT2Config(
        vocab_size=hf["vocab_size"],
        max_positions=hf.get("n_positions", 1024),
        d_model=hf["n_embd"],
        num_layers=hf["n_layer"],
        num_heads=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
        dropout=float(hf.get("resid_pdrop", 0.0)),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", True),
        init_std=hf.get("initializer_range", 0.02),
    )


def _conv1d(w: torch.Tensor) -> torch.Tensor:
    """Conv1D (in, out) <-> nn.Linear (out, in)."""
    return w.t().contiguous()


def build_from_hf(hf_config: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    cfg = config_from_hf(hf_config)
    archs = hf_config.get("architectures") or ["GPT2LMHeadModel"]
    backbone_only = archs[0] == "GPT2Model"
    scalar = archs[0] == "GPT2ForSequenceClassification"
    if scalar and int(hf_config.get("num_labels", len(hf_config.get("id2label") or {}) or 2)) != 1:
        raise CheckpointError("config.json: GPT2ForSequenceClassification is read with num_labels=1 only")
    model: nn.Module = (
        GPT2Model(cfg) if backbone_only else TaskModel(GPT2Model(cfg), ScalarHead(cfg.d_model)) if scalar
        else gpt2_lm(cfg)
    )
    prefix = "" if backbone_only else "backbone."
    converted: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for hf_key, tensor in state_dict.items():
        key = hf_key.removeprefix("transformer.")
        if key.endswith(IGNORED_SUFFIXES):
            continue
        if key == "score.weight" and scalar:
            converted["head.score.weight"], origin["head.score.weight"] = tensor, hf_key
            continue
        if key == "lm_head.weight":
            if backbone_only or scalar:
                continue
            converted["head.lm_head.weight"], origin["head.lm_head.weight"] = tensor, hf_key
            continue
        fused = FUSED_QKV.match(key)
        if fused is not None:
            layer, kind = fused.groups()
            parts = (_conv1d(tensor) if tensor.dim() == 2 else tensor).chunk(3, dim=0)
            if tensor.shape[-1] != 3 * cfg.d_model:
                raise CheckpointError(
                    f"weight {hf_key!r} has shape {tuple(tensor.shape)} but the config expects last "
                    f"dimension {3 * cfg.d_model}"
                )
            for name, part in zip("qkv", parts):
                target = f"{prefix}layers.{layer}.attn.{name}_proj.{kind}"
                converted[target], origin[target] = part, hf_key
            continue
        mapped = KEY_MAP.to_plmkit(key)
        if mapped is None:
            raise CheckpointError(f"unexpected weight {hf_key!r} in gpt2 checkpoint")
        if tensor.dim() == 2 and (".c_proj." in key or ".c_fc." in key):
            tensor = _conv1d(tensor)
        converted[prefix + mapped], origin[prefix + mapped] = tensor, hf_key
    load_checked(model, converted, origin)
    return model


def export_to_hf(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    backbone = model.backbone if isinstance(model, TaskModel) else model
    cfg: GPT2Config = backbone.config
    out: dict[str, torch.Tensor] = {}
    for key, tensor in backbone.state_dict().items():
        parts = key.split(".")
        if key.endswith((".q_proj.weight", ".q_proj.bias")):
            layer, kind = parts[1], parts[-1]
            fused = torch.cat([backbone.state_dict()[f"layers.{layer}.attn.{n}_proj.{kind}"] for n in "qkv"])
            out[f"transformer.h.{layer}.attn.c_attn.{kind}"] = _conv1d(fused) if kind == "weight" else fused
            continue
        if key.endswith((".k_proj.weight", ".k_proj.bias", ".v_proj.weight", ".v_proj.bias")):
            continue
        hf_key = KEY_MAP.to_hf(key)
        if hf_key is None:
            raise CheckpointError(
                f"no gpt2 checkpoint name for plmkit weight {key!r} (is an adapter attached?)"
            )
        if tensor.dim() == 2 and (".c_proj." in hf_key or ".c_fc." in hf_key):
            tensor = _conv1d(tensor)
        out["transformer." + hf_key] = tensor.contiguous()
    is_scalar = isinstance(model, TaskModel) and isinstance(model.head, ScalarHead)
    is_lm = isinstance(model, TaskModel) and not is_scalar
    if is_scalar:
        if model.head.score.bias is not None:
            raise CheckpointError("a ScalarHead with a bias has no GPT2ForSequenceClassification layout")
        out["score.weight"] = model.head.score.weight.detach().contiguous()
    elif is_lm and not cfg.tie_embeddings:
        out["lm_head.weight"] = model.head.lm_head.weight.detach().contiguous()
    architecture = (
        "GPT2ForSequenceClassification" if is_scalar else "GPT2LMHeadModel" if is_lm else "GPT2Model"
    )
    hf = {
        "architectures": [architecture],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_positions,
        "n_ctx": cfg.max_positions,
        "n_embd": cfg.d_model,
        "n_layer": cfg.num_layers,
        "n_head": cfg.num_heads,
        "n_inner": cfg.d_ff,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": "float32",
        # transformers' defaults (50256, GPT-2's <|endoftext|>) lie outside a smaller vocabulary; `save_hf`
        # fills in the tokenizer's ids when it has them.
        "bos_token_id": 50256 if cfg.vocab_size > 50256 else None,
        "eos_token_id": 50256 if cfg.vocab_size > 50256 else None,
    }
    if is_scalar:
        hf.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    return hf, {k: v.detach() for k, v in out.items()}


def build_native(config: dict, architecture: str) -> nn.Module:
    """A model from a plmkit checkpoint's config.json (`config` and `architecture` fields)."""
    cfg = GPT2Config(**config)
    # Training checkpoints name the class: a TaskModel of a decoder is its causal LM.
    if architecture in ("causal_lm", "TaskModel"):
        return gpt2_lm(cfg)
    if architecture in ("backbone", "GPT2Model"):
        return GPT2Model(cfg)
    raise CheckpointError(f"config.json: unknown gpt2 architecture {architecture!r}")
