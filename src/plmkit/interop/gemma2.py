"""Gemma 2 checkpoints (`model_type: gemma2`) <-> `plmkit.models.gemma2`.

A pure rename. The one trap is a name: Gemma 2's `post_attention_layernorm` is the norm *after*
attention (plmkit's `post_attn_norm`), while in Llama the same name is the norm before the MLP; the
MLP's norms are `pre_feedforward_layernorm` / `post_feedforward_layernorm`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from plmkit.errors import CheckpointError, ConfigError
from plmkit.interop.convert import KeyMap, load_checked
from plmkit.interop.llama import convert_state, export_state, is_backbone_only, require, rope_from_hf
from plmkit.models.gemma2 import Gemma2Config, Gemma2Model, gemma2_lm
from plmkit.models.heads import TaskModel

MODEL_TYPES = ("gemma2",)

KEY_MAP = KeyMap({
    "model.embed_tokens.weight": "backbone.embed_tokens.weight",
    "model.layers.{}.input_layernorm.weight": "backbone.layers.{}.attn_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "backbone.layers.{}.post_attn_norm.weight",
    "model.layers.{}.pre_feedforward_layernorm.weight": "backbone.layers.{}.mlp_norm.weight",
    "model.layers.{}.post_feedforward_layernorm.weight": "backbone.layers.{}.post_mlp_norm.weight",
    **{f"model.layers.{{}}.self_attn.{p}_proj.{w}": f"backbone.layers.{{}}.attn.{p}_proj.{w}"
       for p in "qkvo" for w in ("weight", "bias")},
    **{f"model.layers.{{}}.mlp.{p}_proj.weight": f"backbone.layers.{{}}.mlp.{p}_proj.weight"
       for p in ("gate", "up", "down")},
    "model.norm.weight": "backbone.norm.weight",
    "lm_head.weight": "head.lm_head.weight",
})

GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh")


def config_from_hf(hf: dict) -> Gemma2Config:
    act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in GELU_TANH:
        raise CheckpointError(f"config.json: hidden_activation {act!r} is not supported for gemma2")
    num_layers = require(hf, "num_hidden_layers")
    base, scaling = rope_from_hf(hf)
    window = hf.get("sliding_window")
    layer_types = hf.get("layer_types")
    layers = None
    if window is not None and layer_types:
        layers = [i for i, kind in enumerate(layer_types) if kind == "sliding_attention"]
    try:
        return Gemma2Config(
            vocab_size=require(hf, "vocab_size"),
            max_positions=hf.get("max_position_embeddings", 8192),
            d_model=require(hf, "hidden_size"),
            num_layers=num_layers,
            num_heads=require(hf, "num_attention_heads"),
            num_kv_heads=hf.get("num_key_value_heads"),
            head_dim=hf.get("head_dim", 256),
            d_ff=require(hf, "intermediate_size"),
            rope_base=base,
            rope_scaling=scaling,
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            attention_bias=bool(hf.get("attention_bias", False)),
            query_pre_attn_scalar=hf.get("query_pre_attn_scalar", 256),
            attn_softcap=hf.get("attn_logit_softcapping", 50.0),
            final_softcap=hf.get("final_logit_softcapping", 30.0),
            sliding_window=window,
            sliding_layers=layers,
            tie_embeddings=hf.get("tie_word_embeddings", True),
            dropout=float(hf.get("attention_dropout", 0.0)),
            init_std=hf.get("initializer_range", 0.02),
        )
    except ConfigError as e:
        raise CheckpointError(f"config.json: {e}") from None


def build_from_hf(hf_config: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    cfg = config_from_hf(hf_config)
    backbone_only = is_backbone_only(hf_config)
    model: nn.Module = Gemma2Model(cfg) if backbone_only else gemma2_lm(cfg)
    converted, origin = convert_state(state_dict, backbone_only, KEY_MAP)
    load_checked(model, converted, origin)
    return model


def export_to_hf(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    cfg: Gemma2Config = model.config
    is_lm = isinstance(model, TaskModel)
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_base}
    if cfg.rope_scaling is not None:
        raise CheckpointError("cannot save as model_type 'gemma2': Gemma 2 has no RoPE scaling")
    hf = {
        "architectures": ["Gemma2ForCausalLM" if is_lm else "Gemma2Model"],
        "model_type": "gemma2",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_positions,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base,
        "rope_parameters": rope,
        "attention_bias": cfg.attention_bias,
        "attention_dropout": cfg.dropout,
        "query_pre_attn_scalar": cfg.query_pre_attn_scalar,
        "attn_logit_softcapping": cfg.attn_softcap,
        "final_logit_softcapping": cfg.final_softcap,
        "sliding_window": cfg.sliding_window,
        "layer_types": ["full_attention" if w is None else "sliding_attention" for w in cfg.layer_windows()],
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "pad_token_id": None,  # Gemma2Config's defaults (pad 0, bos 2, eos 1) are the real vocabulary's
        "torch_dtype": "float32",
    }
    return hf, export_state(model, KEY_MAP)


def build_native(config: dict, architecture: str) -> nn.Module:
    cfg = Gemma2Config(**config)
    if architecture in ("causal_lm", "TaskModel"):
        return gemma2_lm(cfg)
    if architecture in ("backbone", "Gemma2Model"):
        return Gemma2Model(cfg)
    raise CheckpointError(f"config.json: unknown gemma2 architecture {architecture!r}")
