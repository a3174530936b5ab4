"""Llama checkpoints (`model_type: llama`) <-> `plmkit.models.llama`.

The layout is already nn.Linear with separate projections, and Hugging Face stores q/k weights in the
half-split rotary layout that `layers.apply_rotary` uses, so the conversion is a pure rename.
"""

from __future__ import annotations

import torch
from torch import nn

from plmkit.errors import CheckpointError
from plmkit.interop.convert import KeyMap, load_checked
from plmkit.models.heads import TaskModel
from plmkit.models.llama import LlamaConfig, LlamaModel, llama_lm

MODEL_TYPES = ("llama",)

KEY_MAP = KeyMap({
    "model.embed_tokens.weight": "backbone.embed_tokens.weight",
    "model.layers.{}.input_layernorm.weight": "backbone.layers.{}.attn_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "backbone.layers.{}.mlp_norm.weight",
    **{f"model.layers.{{}}.self_attn.{p}_proj.{w}": f"backbone.layers.{{}}.attn.{p}_proj.{w}"
       for p in "qkvo" for w in ("weight", "bias")},
    **{f"model.layers.{{}}.mlp.{p}_proj.{w}": f"backbone.layers.{{}}.mlp.{p}_proj.{w}"
       for p in ("gate", "up", "down") for w in ("weight", "bias")},
    "model.norm.weight": "backbone.norm.weight",
    "lm_head.weight": "head.lm_head.weight",
})
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def config_from_hf(hf: dict) -> LlamaConfig:
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"config.json: hidden_act {hf['hidden_act']!r} is not supported for llama")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise CheckpointError(f"config.json: rope_type {rope_type!r} is not supported (only default RoPE)")
    return LlamaConfig(
        vocab_size=hf["vocab_size"],
        max_positions=hf.get("max_position_embeddings", 2048),
        d_model=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        num_kv_heads=hf.get("num_key_value_heads"),
        head_dim=hf.get("head_dim"),
        d_ff=hf["intermediate_size"],
        rope_base=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        attention_bias=hf.get("attention_bias", False),
        mlp_bias=hf.get("mlp_bias", False),
        tie_embeddings=hf.get("tie_word_embeddings", False),
        dropout=float(hf.get("attention_dropout", 0.0)),
        init_std=hf.get("initializer_range", 0.02),
    )


def build_from_hf(hf_config: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    cfg = config_from_hf(hf_config)
    archs = hf_config.get("architectures") or ["LlamaForCausalLM"]
    backbone_only = archs[0] == "LlamaModel"
    model: nn.Module = LlamaModel(cfg) if backbone_only else llama_lm(cfg)
    converted: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for hf_key, tensor in state_dict.items():
        if hf_key.endswith(IGNORED_SUFFIXES):
            continue
        key = hf_key if hf_key.startswith(("model.", "lm_head.")) else "model." + hf_key
        mapped = KEY_MAP.to_plmkit(key)
        if mapped is None:
            raise CheckpointError(f"unexpected weight {hf_key!r} in llama checkpoint")
        if backbone_only:
            if mapped.startswith("head."):
                continue
            mapped = mapped.removeprefix("backbone.")
        converted[mapped], origin[mapped] = tensor, hf_key
    load_checked(model, converted, origin)
    return model


def export_to_hf(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    is_lm = isinstance(model, TaskModel)
    cfg: LlamaConfig = model.config
    out: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        full = key if is_lm else "backbone." + key
        if full == "head.lm_head.weight" and cfg.tie_embeddings:
            continue
        hf_key = KEY_MAP.to_hf(full)
        if hf_key is None:
            raise CheckpointError(
                f"no llama checkpoint name for plmkit weight {key!r} (is an adapter attached?)"
            )
        out[hf_key] = tensor.detach().contiguous()
    hf = {
        "architectures": ["LlamaForCausalLM" if is_lm else "LlamaModel"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_positions,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
        "attention_bias": cfg.attention_bias,
        "mlp_bias": cfg.mlp_bias,
        "attention_dropout": cfg.dropout,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "torch_dtype": "float32",
    }
    return hf, out


def build_native(config: dict, architecture: str) -> nn.Module:
    """A model from a plmkit checkpoint's config.json (`config` and `architecture` fields)."""
    cfg = LlamaConfig(**config)
    # Training checkpoints name the class: a TaskModel of a decoder is its causal LM.
    if architecture in ("causal_lm", "TaskModel"):
        return llama_lm(cfg)
    if architecture in ("backbone", "LlamaModel"):
        return LlamaModel(cfg)
    raise CheckpointError(f"config.json: unknown llama architecture {architecture!r}")
