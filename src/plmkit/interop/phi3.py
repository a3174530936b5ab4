"""Phi-3 checkpoints (`model_type: phi3`) <-> `plmkit.models.llama`.

Phi-3 is the Llama block (RMSNorm, SwiGLU, RoPE with LongRoPE scaling, a sliding window on every layer)
whose checkpoint fuses two groups of projections: `qkv_proj` = [q; k; v] and `gate_up_proj` =
[gate; up] stacked along the output dimension. plmkit keeps separate `q_proj k_proj v_proj` and
`gate_proj up_proj` (so PEFT targets like "q_proj,v_proj" mean the same on every family): the two
transforms below split them on the way in and concatenate them on the way out; everything else is
Llama's key map and config reading.
"""

from __future__ import annotations

import torch
from torch import nn

from plmkit.errors import CheckpointError
from plmkit.interop import llama as llama_interop
from plmkit.interop.convert import load_checked
from plmkit.models.heads import TaskModel
from plmkit.models.llama import LlamaConfig, LlamaModel, llama_lm

MODEL_TYPES = ("phi3",)

def split_fused(
    state_dict: dict[str, torch.Tensor], cfg: LlamaConfig
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """qkv_proj -> q_proj, k_proj, v_proj and gate_up_proj -> gate_proj, up_proj (rows, in that order);
    also, for each split key, the fused key it came from (for error messages)."""
    q_rows, kv_rows = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    out: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    for key, tensor in state_dict.items():
        prefix, _, name = key.rpartition(".self_attn.qkv_proj.")
        if name == "weight":
            if tensor.shape[0] != q_rows + 2 * kv_rows:
                raise CheckpointError(
                    f"weight {key!r} has {tensor.shape[0]} rows but the config expects "
                    f"{q_rows} + 2 x {kv_rows} (q, k, v)"
                )
            q, k, v = tensor.split([q_rows, kv_rows, kv_rows], dim=0)
            for part, piece in zip("qkv", (q, k, v)):
                out[f"{prefix}.self_attn.{part}_proj.weight"] = piece
                sources[f"{prefix}.self_attn.{part}_proj.weight"] = key
            continue
        prefix, _, name = key.rpartition(".mlp.gate_up_proj.")
        if name == "weight":
            if tensor.shape[0] != 2 * cfg.d_ff:
                raise CheckpointError(
                    f"weight {key!r} has {tensor.shape[0]} rows but the config expects 2 x {cfg.d_ff} "
                    "(gate, up)"
                )
            gate, up = tensor.split([cfg.d_ff, cfg.d_ff], dim=0)
            for part, piece in (("gate", gate), ("up", up)):
                out[f"{prefix}.mlp.{part}_proj.weight"] = piece
                sources[f"{prefix}.mlp.{part}_proj.weight"] = key
            continue
        out[key] = tensor
    return out, sources


def fuse(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `split_fused`, on Hugging Face key names."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if ".self_attn.q_proj." in key:
            prefix = key.split(".self_attn.")[0]
            parts = [state_dict[f"{prefix}.self_attn.{p}_proj.weight"] for p in "qkv"]
            out[f"{prefix}.self_attn.qkv_proj.weight"] = torch.cat(parts, 0)
        elif ".mlp.gate_proj." in key:
            prefix = key.split(".mlp.")[0]
            parts = [state_dict[f"{prefix}.mlp.{p}_proj.weight"] for p in ("gate", "up")]
            out[f"{prefix}.mlp.gate_up_proj.weight"] = torch.cat(parts, 0)
        elif ".self_attn.k_proj." in key or ".self_attn.v_proj." in key or ".mlp.up_proj." in key:
            continue
        else:
            out[key] = tensor
    return out


def build_from_hf(hf_config: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    cfg = llama_interop.config_from_hf(hf_config)
    backbone_only = llama_interop.is_backbone_only(hf_config)
    model: nn.Module = LlamaModel(cfg) if backbone_only else llama_lm(cfg)
    split, sources = split_fused(state_dict, cfg)
    converted, origin = llama_interop.convert_state(split, backbone_only)
    load_checked(model, converted, {key: sources.get(hf_key, hf_key) for key, hf_key in origin.items()})
    return model


def export_to_hf(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    cfg: LlamaConfig = model.config
    hf = llama_interop.hf_config_of(cfg, isinstance(model, TaskModel))
    hf["original_max_position_embeddings"] = hf.get("original_max_position_embeddings", cfg.max_positions)
    # Phi3Config's default pad id 32000 would index past a smaller vocabulary's embedding
    hf["pad_token_id"] = None
    return hf, fuse(llama_interop.export_state(model))


def build_native(config: dict, architecture: str) -> nn.Module:
    return llama_interop.build_native(config, architecture)
