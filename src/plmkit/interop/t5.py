"""T5 checkpoints (`model_type: t5`, `T5ForConditionalGeneration`) <-> `plmkit.models.t5`.

Both T5 v1.0 (ReLU feed-forward, decoder output rescaled by d_model^-0.5 before the tied LM head) and
v1.1 (gated-GELU, no rescaling, untied LM head in the original checkpoints). Hugging Face stores one
`shared` embedding plus tied copies in the encoder and decoder, which are not separate weights here.
Recent transformers versions always tie the LM head and record the rescaling in `scale_decoder_outputs`;
older v1.1 configs say `tie_word_embeddings: false` and carry their own `lm_head.weight`.
"""

from __future__ import annotations

import torch
from torch import nn

from plmkit.errors import CheckpointError
from plmkit.interop.convert import KeyMap, load_checked
from plmkit.models.heads import TaskModel
from plmkit.models.t5 import T5Config, T5Model, t5_lm

MODEL_TYPES = ("t5",)

_ATTN = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
_MLP = {"wi": "up_proj", "wi_0": "gate_proj", "wi_1": "up_proj_gated", "wo": "down_proj"}


def _key_map() -> dict[str, str]:
    keys = {
        "shared.weight": "embed_tokens.weight",
        "encoder.final_layer_norm.weight": "encoder.norm.weight",
        "decoder.final_layer_norm.weight": "decoder.norm.weight",
    }
    for stack in ("encoder", "decoder"):
        block = f"{stack}.block.{{}}.layer"
        ours = f"{stack}.layers.{{}}"
        for hf, pk in _ATTN.items():
            keys[f"{block}.0.SelfAttention.{hf}.weight"] = f"{ours}.self_attn.{pk}.weight"
        keys[f"{block}.0.SelfAttention.relative_attention_bias.weight"] = (
            f"{ours}.self_attn.relative_attention_bias.weight"
        )
        keys[f"{block}.0.layer_norm.weight"] = f"{ours}.attn_norm.weight"
        mlp = 2 if stack == "decoder" else 1
        if stack == "decoder":
            for hf, pk in _ATTN.items():
                keys[f"{block}.1.EncDecAttention.{hf}.weight"] = f"{ours}.cross_attn.{pk}.weight"
            keys[f"{block}.1.layer_norm.weight"] = f"{ours}.cross_attn_norm.weight"
        for hf, pk in _MLP.items():
            keys[f"{block}.{mlp}.DenseReluDense.{hf}.weight"] = f"{ours}.mlp.{pk}.weight"
        keys[f"{block}.{mlp}.layer_norm.weight"] = f"{ours}.mlp_norm.weight"
    return keys


KEY_MAP = KeyMap(_key_map())
# Tied copies of `shared`, and a table transformers creates but never uses.
IGNORED = (
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
)


def config_from_hf(hf: dict, has_lm_head: bool = False) -> T5Config:
    proj = hf.get("feed_forward_proj", "relu")
    if proj not in ("relu", "gated-gelu"):
        raise CheckpointError(f"config.json: feed_forward_proj {proj!r} is not supported for t5")
    tie = hf.get("tie_word_embeddings", True) is not False
    scale = hf.get("scale_decoder_outputs", tie)
    return T5Config(
        vocab_size=hf["vocab_size"],
        d_model=hf["d_model"],
        d_kv=hf["d_kv"],
        d_ff=hf["d_ff"],
        num_layers=hf["num_layers"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        num_heads=hf["num_heads"],
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        dropout=float(hf.get("dropout_rate", 0.1)),
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        feed_forward=proj,
        tie_embeddings=tie or not has_lm_head,
        scale_decoder_outputs=bool(scale),
        pad_token_id=hf.get("pad_token_id", 0) or 0,
        eos_token_id=hf.get("eos_token_id", 1),
        decoder_start_token_id=hf.get("decoder_start_token_id", hf.get("pad_token_id", 0)) or 0,
        init_factor=hf.get("initializer_factor", 1.0),
    )


def _to_plmkit(key: str, gated: bool) -> str | None:
    mapped = KEY_MAP.to_plmkit(key)
    if mapped is not None and mapped.endswith("mlp.up_proj.weight") and gated:
        return None  # v1.1 has no single `wi`
    if mapped is not None and mapped.endswith("up_proj_gated.weight"):
        return mapped.replace("up_proj_gated", "up_proj")
    return mapped


def build_from_hf(hf_config: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    cfg = config_from_hf(hf_config, has_lm_head="lm_head.weight" in state_dict)
    archs = hf_config.get("architectures") or ["T5ForConditionalGeneration"]
    if archs[0] not in ("T5ForConditionalGeneration", "T5Model"):
        raise CheckpointError(f"config.json: architecture {archs[0]!r} is not supported for t5")
    backbone_only = archs[0] == "T5Model"
    model: nn.Module = T5Model(cfg) if backbone_only else t5_lm(cfg)
    prefix = "" if backbone_only else "backbone."
    gated = cfg.feed_forward == "gated-gelu"
    converted: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for hf_key, tensor in state_dict.items():
        if hf_key in IGNORED:
            continue
        if hf_key == "lm_head.weight":
            if backbone_only or cfg.tie_embeddings:
                continue
            converted["head.lm_head.weight"], origin["head.lm_head.weight"] = tensor, hf_key
            continue
        mapped = _to_plmkit(hf_key, gated)
        if mapped is None:
            raise CheckpointError(f"unexpected weight {hf_key!r} in t5 checkpoint")
        converted[prefix + mapped], origin[prefix + mapped] = tensor, hf_key
    load_checked(model, converted, origin)
    return model


def export_to_hf(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    backbone = model.backbone if isinstance(model, TaskModel) else model
    cfg: T5Config = backbone.config
    gated = cfg.feed_forward == "gated-gelu"
    out: dict[str, torch.Tensor] = {}
    for key, tensor in backbone.state_dict().items():
        if gated and key.endswith("mlp.up_proj.weight"):
            key = key.replace("up_proj", "up_proj_gated")
        hf_key = KEY_MAP.to_hf(key)
        if hf_key is None:
            raise CheckpointError(
                f"no t5 checkpoint name for plmkit weight {key!r} (is an adapter attached?)"
            )
        out[hf_key] = tensor.detach().contiguous()
    is_lm = isinstance(model, TaskModel)
    if is_lm and not cfg.tie_embeddings:
        out["lm_head.weight"] = model.head.lm_head.weight.detach().contiguous()
    hf = {
        "architectures": ["T5ForConditionalGeneration" if is_lm else "T5Model"],
        "model_type": "t5",
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "d_kv": cfg.d_kv,
        "d_ff": cfg.d_ff,
        "num_layers": cfg.num_layers,
        "num_decoder_layers": cfg.num_decoder_layers,
        "num_heads": cfg.num_heads,
        "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
        "relative_attention_max_distance": cfg.relative_attention_max_distance,
        "dropout_rate": cfg.dropout,
        "layer_norm_epsilon": cfg.norm_eps,
        "feed_forward_proj": cfg.feed_forward,
        "is_gated_act": gated,
        "dense_act_fn": "gelu_new" if gated else "relu",
        "tie_word_embeddings": cfg.tie_embeddings,
        "scale_decoder_outputs": cfg.scale_decoder_outputs,
        "pad_token_id": cfg.pad_token_id,
        "eos_token_id": cfg.eos_token_id,
        "decoder_start_token_id": cfg.decoder_start_token_id,
        "initializer_factor": cfg.init_factor,
        "is_encoder_decoder": True,
        "torch_dtype": "float32",
    }
    return hf, out


def build_native(config: dict, architecture: str) -> nn.Module:
    """A model from a plmkit checkpoint's config.json (`config` and `architecture` fields)."""
    cfg = T5Config(**config)
    if architecture in ("seq2seq_lm", "causal_lm"):
        return t5_lm(cfg)
    if architecture == "backbone":
        return T5Model(cfg)
    raise CheckpointError(f"config.json: unknown t5 architecture {architecture!r}")
