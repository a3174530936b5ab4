"""BART checkpoints (`model_type: bart`) <-> `plmkit.models.bart`.

Architectures: `BartForConditionalGeneration` (LM head tied to `model.shared`, `final_logits_bias` as the
head's bias), `BartForSequenceClassification` (`classification_head.dense` / `out_proj`) and `BartModel`.
The encoder's and decoder's `embed_tokens` are tied copies of `shared` and are not separate weights here.
"""

from __future__ import annotations

import torch
from torch import nn

from plmkit.errors import CheckpointError
from plmkit.interop.convert import KeyMap, load_checked
from plmkit.models.bart import BartConfig, BartModel, bart_classifier, bart_lm
from plmkit.models.heads import SequenceClassificationHead, TaskModel

MODEL_TYPES = ("bart",)
ARCHITECTURES = ("BartForConditionalGeneration", "BartForSequenceClassification", "BartModel")


def _key_map() -> dict[str, str]:
    keys = {"shared.weight": "embed_tokens.weight"}
    for stack in ("encoder", "decoder"):
        keys[f"{stack}.embed_positions.weight"] = f"{stack}.embed_positions.weight"
        for p in ("weight", "bias"):
            keys[f"{stack}.layernorm_embedding.{p}"] = f"{stack}.embed_norm.{p}"
            layer, ours = f"{stack}.layers.{{}}", f"{stack}.layers.{{}}"
            attns = [("self_attn", "self_attn")] + (
                [("encoder_attn", "cross_attn")] if stack == "decoder" else []
            )
            for hf_attn, attn in attns:
                for proj in ("q_proj", "k_proj", "v_proj"):
                    keys[f"{layer}.{hf_attn}.{proj}.{p}"] = f"{ours}.{attn}.{proj}.{p}"
                keys[f"{layer}.{hf_attn}.out_proj.{p}"] = f"{ours}.{attn}.o_proj.{p}"
            keys[f"{layer}.self_attn_layer_norm.{p}"] = f"{ours}.attn_norm.{p}"
            if stack == "decoder":
                keys[f"{layer}.encoder_attn_layer_norm.{p}"] = f"{ours}.cross_attn_norm.{p}"
            keys[f"{layer}.fc1.{p}"] = f"{ours}.mlp.up_proj.{p}"
            keys[f"{layer}.fc2.{p}"] = f"{ours}.mlp.down_proj.{p}"
            keys[f"{layer}.final_layer_norm.{p}"] = f"{ours}.mlp_norm.{p}"
    return keys


KEY_MAP = KeyMap(_key_map())
HEAD_MAP = {
    "classification_head.dense.weight": "head.dense.weight",
    "classification_head.dense.bias": "head.dense.bias",
    "classification_head.out_proj.weight": "head.classifier.weight",
    "classification_head.out_proj.bias": "head.classifier.bias",
}
IGNORED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def config_from_hf(hf: dict) -> BartConfig:
    act = hf.get("activation_function", "gelu")
    if act != "gelu":
        raise CheckpointError(f"config.json: activation_function {act!r} is not supported for bart")
    if hf.get("add_final_layer_norm") or hf.get("normalize_before"):
        raise CheckpointError("config.json: pre-LN (mBART-style) layouts are not supported for bart")
    if hf.get("encoder_attention_heads", 16) != hf.get("decoder_attention_heads", 16):
        raise CheckpointError("config.json: encoder and decoder head counts must match for bart")
    if hf.get("encoder_ffn_dim", 4096) != hf.get("decoder_ffn_dim", 4096):
        raise CheckpointError("config.json: encoder_ffn_dim and decoder_ffn_dim must match for bart")
    return BartConfig(
        vocab_size=hf["vocab_size"],
        max_positions=hf.get("max_position_embeddings", 1024),
        d_model=hf["d_model"],
        num_layers=hf.get("encoder_layers", 12),
        num_decoder_layers=hf.get("decoder_layers", 12),
        num_heads=hf.get("encoder_attention_heads", 16),
        d_ff=hf.get("encoder_ffn_dim", 4096),
        dropout=float(hf.get("dropout", 0.1)),
        attention_dropout=float(hf.get("attention_dropout", 0.0)),
        activation_dropout=float(hf.get("activation_dropout", 0.0)),
        scale_embedding=bool(hf.get("scale_embedding", False)),
        pad_token_id=hf.get("pad_token_id", 1),
        bos_token_id=hf.get("bos_token_id", 0),
        eos_token_id=hf.get("eos_token_id", 2),
        decoder_start_token_id=hf.get("decoder_start_token_id", 2),
        init_std=hf.get("init_std", 0.02),
    )


def build_from_hf(hf_config: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    cfg = config_from_hf(hf_config)
    arch = (hf_config.get("architectures") or ["BartForConditionalGeneration"])[0]
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"config.json: architecture {arch!r} is not supported for bart")
    if arch == "BartForSequenceClassification":
        num_labels = len(hf_config.get("id2label") or {}) or hf_config.get("num_labels", 3)
        model: nn.Module = bart_classifier(cfg, num_labels, float(hf_config.get("classifier_dropout") or 0.0))
    elif arch == "BartModel":
        model = BartModel(cfg)
    else:
        model = bart_lm(cfg)
    prefix = "" if arch == "BartModel" else "backbone."
    converted: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for hf_key, tensor in state_dict.items():
        key = hf_key.removeprefix("model.")
        if key in IGNORED or (key == "lm_head.weight" and arch == "BartForConditionalGeneration"):
            continue  # tied to shared
        if key == "final_logits_bias":
            if arch != "BartForConditionalGeneration":
                continue
            target, tensor = "head.lm_head.bias", tensor.reshape(-1)
        elif key in HEAD_MAP:
            target = HEAD_MAP[key]
        else:
            mapped = KEY_MAP.to_plmkit(key)
            if mapped is None:
                raise CheckpointError(f"unexpected weight {hf_key!r} in bart checkpoint")
            target = prefix + mapped
        converted[target], origin[target] = tensor, hf_key
    if arch == "BartForConditionalGeneration" and "head.lm_head.bias" not in converted:
        converted["head.lm_head.bias"] = torch.zeros(cfg.vocab_size)
    load_checked(model, converted, origin)
    return model


def export_to_hf(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    backbone = model.backbone if isinstance(model, TaskModel) else model
    cfg: BartConfig = backbone.config
    out: dict[str, torch.Tensor] = {}
    for key, tensor in backbone.state_dict().items():
        hf_key = KEY_MAP.to_hf(key)
        if hf_key is None:
            raise CheckpointError(
                f"no bart checkpoint name for plmkit weight {key!r} (is an adapter attached?)"
            )
        out["model." + hf_key] = tensor.detach().contiguous()
    extra: dict = {}
    if not isinstance(model, TaskModel):
        arch = "BartModel"
    elif isinstance(model.head, SequenceClassificationHead):
        arch = "BartForSequenceClassification"
        for hf_key, ours in HEAD_MAP.items():
            out[hf_key] = model.state_dict()[ours].detach().contiguous()
        n = model.head.num_labels
        extra = {
            "id2label": {str(i): f"LABEL_{i}" for i in range(n)},
            "label2id": {f"LABEL_{i}": i for i in range(n)},
        }
    else:
        arch = "BartForConditionalGeneration"
        out["final_logits_bias"] = model.head.lm_head.bias.detach().reshape(1, -1).contiguous()
    hf = {
        "architectures": [arch],
        "model_type": "bart",
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_positions,
        "d_model": cfg.d_model,
        "encoder_layers": cfg.num_layers,
        "decoder_layers": cfg.num_decoder_layers,
        "encoder_attention_heads": cfg.num_heads,
        "decoder_attention_heads": cfg.num_heads,
        "encoder_ffn_dim": cfg.d_ff,
        "decoder_ffn_dim": cfg.d_ff,
        "activation_function": "gelu",
        "dropout": cfg.dropout,
        "attention_dropout": cfg.attention_dropout,
        "activation_dropout": cfg.activation_dropout,
        "scale_embedding": cfg.scale_embedding,
        "pad_token_id": cfg.pad_token_id,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "decoder_start_token_id": cfg.decoder_start_token_id,
        "forced_eos_token_id": None,
        "init_std": cfg.init_std,
        "is_encoder_decoder": True,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        **extra,
    }
    return hf, out


def build_native(config: dict, architecture: str) -> nn.Module:
    """A model from a plmkit checkpoint's config.json (`config` and `architecture` fields)."""
    cfg = BartConfig(**config)
    if architecture in ("seq2seq_lm", "causal_lm"):
        return bart_lm(cfg)
    if architecture == "backbone":
        return BartModel(cfg)
    raise CheckpointError(f"config.json: unknown bart architecture {architecture!r}")
