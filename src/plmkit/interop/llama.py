"""Llama-layout checkpoints (`model_type`: llama, mistral, qwen2, qwen3) <-> `plmkit.models.llama`.

These four model types store the same tensors under the same names (Qwen3 adds `q_norm`/`k_norm`), and
Hugging Face stores q/k weights in the half-split rotary layout that `layers.apply_rotary` uses, so the
weights convert by a pure rename. What differs is config.json, read here into the block's options:

| model_type | options set                                                                     |
|------------|---------------------------------------------------------------------------------|
| llama      | rope_scaling (linear, dynamic, yarn, llama3), attention_bias, mlp_bias           |
| mistral    | sliding_window on every layer                                                   |
| qwen2      | qkv_bias; sliding_window on layers >= max_window_layers when use_sliding_window |
| qwen3      | qk_norm, attention_bias; the same sliding-window rule as qwen2                  |

Phi-3 (`interop/phi3.py`) reuses the config reading and key map and splits its fused projections.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from plmkit.errors import CheckpointError, ConfigError
from plmkit.interop.convert import KeyMap, load_checked
from plmkit.models.heads import ScalarHead, TaskModel
from plmkit.models.layers import ROPE_TYPES, RopeScaling
from plmkit.models.llama import LlamaConfig, LlamaModel, llama_lm

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
ARCHITECTURE = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3", "phi3": "Phi3"}

KEY_MAP = KeyMap({
    "model.embed_tokens.weight": "backbone.embed_tokens.weight",
    "model.layers.{}.input_layernorm.weight": "backbone.layers.{}.attn_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "backbone.layers.{}.mlp_norm.weight",
    **{f"model.layers.{{}}.self_attn.{p}_proj.{w}": f"backbone.layers.{{}}.attn.{p}_proj.{w}"
       for p in "qkvo" for w in ("weight", "bias")},
    "model.layers.{}.self_attn.q_norm.weight": "backbone.layers.{}.attn.q_norm.weight",
    "model.layers.{}.self_attn.k_norm.weight": "backbone.layers.{}.attn.k_norm.weight",
    **{f"model.layers.{{}}.mlp.{p}_proj.{w}": f"backbone.layers.{{}}.mlp.{p}_proj.{w}"
       for p in ("gate", "up", "down") for w in ("weight", "bias")},
    "model.norm.weight": "backbone.norm.weight",
    "lm_head.weight": "head.lm_head.weight",
})
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

# Hugging Face rope_parameters key -> RopeScaling field (the same number under another name).
ROPE_KEYS = {
    "factor": "factor", "original_max_position_embeddings": "original_max_positions",
    "low_freq_factor": "low_freq_factor", "high_freq_factor": "high_freq_factor", "beta_fast": "beta_fast",
    "beta_slow": "beta_slow", "mscale": "mscale", "mscale_all_dim": "mscale_all_dim", "truncate": "truncate",
    "attention_factor": "attention_factor", "short_factor": "short_factor", "long_factor": "long_factor",
}


def require(hf: dict, key: str) -> Any:
    if key not in hf:
        raise CheckpointError(f"config.json: missing key {key!r}")
    return hf[key]


def rope_from_hf(hf: dict) -> tuple[float, RopeScaling | None]:
    """(rope base, scaling) from config.json's `rope_parameters` (transformers 5) or `rope_scaling` (4.x)."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    base = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if hf.get("model_type") == "phi3" and rope_type in ("su", "yarn"):
        rope_type = "longrope"  # Phi-3's early configs named LongRoPE "su" or "yarn"
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise CheckpointError(f"config.json: partial_rotary_factor {partial} is not supported (only 1.0)")
    if rope_type not in ROPE_TYPES:
        raise CheckpointError(
            f"config.json: rope_type {rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})"
        )
    if rope_type == "default":
        return base, None
    fields = {ours: rope[theirs] for theirs, ours in ROPE_KEYS.items() if rope.get(theirs) is not None}
    if rope_type in ("llama3", "yarn", "longrope") and hf.get("original_max_position_embeddings"):
        # Phi-3 keeps its pretraining context beside rope_parameters, and transformers prefers it there
        fields["original_max_positions"] = hf["original_max_position_embeddings"]
    try:
        return base, RopeScaling(rope_type=rope_type, **fields)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"config.json: rope_parameters: {e}") from None


# The rope_parameters keys each type reads (transformers warns about any other).
ROPE_TYPE_KEYS = {
    "linear": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale",
             "mscale_all_dim", "attention_factor", "truncate"),
    "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"),
    "longrope": ("factor", "original_max_position_embeddings", "attention_factor", "short_factor",
                 "long_factor"),
}


def rope_to_hf(cfg: LlamaConfig | Any) -> dict:
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_base}
    if cfg.rope_scaling is not None:
        kind = params["rope_type"] = cfg.rope_scaling.rope_type
        for theirs in ROPE_TYPE_KEYS[kind]:
            value = getattr(cfg.rope_scaling, ROPE_KEYS[theirs])
            if value is not None:
                params[theirs] = list(value) if isinstance(value, tuple) else value
    return params


def sliding_from_hf(hf: dict, num_layers: int, max_positions: int) -> tuple[int | None, list[int] | None]:
    model_type = hf.get("model_type")
    window = hf.get("sliding_window")
    if model_type in ("qwen2", "qwen3") and not hf.get("use_sliding_window", False):
        return None, None  # Qwen ships a window of 4096 or 131072 that only use_sliding_window turns on
    if model_type == "phi3" and window is not None and window >= max_positions:
        return None, None  # Phi-3-128k ships a window of 262144 > its context: it never hides a key
    if window is None:
        return None, None
    layer_types = hf.get("layer_types")
    if layer_types:
        layers = [i for i, kind in enumerate(layer_types) if kind == "sliding_attention"]
    elif model_type in ("qwen2", "qwen3"):
        layers = list(range(hf.get("max_window_layers", 0), num_layers))
    else:
        layers = None
    return window, layers


def config_from_hf(hf: dict) -> LlamaConfig:
    model_type = hf.get("model_type", "llama")
    if hf.get("hidden_act", "silu") != "silu":
        act = hf["hidden_act"]
        raise CheckpointError(f"config.json: hidden_act {act!r} is not supported for {model_type}")
    num_layers = require(hf, "num_hidden_layers")
    max_positions = hf.get("max_position_embeddings", 2048)
    base, scaling = rope_from_hf(hf)
    window, window_layers = sliding_from_hf(hf, num_layers, max_positions)
    try:
        return LlamaConfig(
            vocab_size=require(hf, "vocab_size"),
            max_positions=max_positions,
            d_model=require(hf, "hidden_size"),
            num_layers=num_layers,
            num_heads=require(hf, "num_attention_heads"),
            num_kv_heads=hf.get("num_key_value_heads"),
            head_dim=hf.get("head_dim"),
            d_ff=require(hf, "intermediate_size"),
            rope_base=base,
            rope_scaling=scaling,
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            attention_bias=bool(hf.get("attention_bias", False)) and model_type in ("llama", "qwen3"),
            mlp_bias=bool(hf.get("mlp_bias", False)) and model_type == "llama",
            qkv_bias=model_type == "qwen2",
            qk_norm=model_type == "qwen3",
            sliding_window=window,
            sliding_layers=window_layers,
            tie_embeddings=hf.get("tie_word_embeddings", False),
            dropout=float(hf.get("attention_dropout", 0.0)),
            init_std=hf.get("initializer_range", 0.02),
            model_type=model_type,
        )
    except ConfigError as e:
        raise CheckpointError(f"config.json: {e}") from None


def is_backbone_only(hf_config: dict) -> bool:
    archs = hf_config.get("architectures") or []
    return bool(archs) and archs[0].endswith("Model") and "For" not in archs[0]


def convert_state(
    state_dict: dict[str, torch.Tensor], backbone_only: bool, key_map: KeyMap = KEY_MAP
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Renamed weights and, for each plmkit key, the checkpoint key it came from."""
    converted: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for hf_key, tensor in state_dict.items():
        if hf_key.endswith(IGNORED_SUFFIXES):
            continue
        key = hf_key if hf_key.startswith(("model.", "lm_head.")) else "model." + hf_key
        mapped = key_map.to_plmkit(key)
        if mapped is None:
            raise CheckpointError(f"unexpected weight {hf_key!r} in checkpoint")
        if backbone_only:
            if mapped.startswith("head."):
                continue
            mapped = mapped.removeprefix("backbone.")
        converted[mapped], origin[mapped] = tensor, hf_key
    return converted, origin


def is_scalar(hf_config: dict) -> bool:
    """A `...ForSequenceClassification` with one label: a reward model (`score`, read at the last token)."""
    archs = hf_config.get("architectures") or []
    if not (archs and archs[0].endswith("ForSequenceClassification")):
        return False
    if int(hf_config.get("num_labels", len(hf_config.get("id2label") or {}) or 2)) != 1:
        raise CheckpointError(f"config.json: {archs[0]} is read with num_labels=1 only")
    return True


def build_from_hf(hf_config: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    cfg = config_from_hf(hf_config)
    backbone_only = is_backbone_only(hf_config)
    if is_scalar(hf_config):
        state_dict = dict(state_dict)
        score = state_dict.pop("score.weight", None)
        if score is None:
            raise CheckpointError("checkpoint is missing weight 'score.weight'")
        model: nn.Module = TaskModel(LlamaModel(cfg), ScalarHead(cfg.d_model))
        converted, origin = convert_state(state_dict, backbone_only=False)
        converted["head.score.weight"], origin["head.score.weight"] = score, "score.weight"
        load_checked(model, converted, origin)
        return model
    model = LlamaModel(cfg) if backbone_only else llama_lm(cfg)
    converted, origin = convert_state(state_dict, backbone_only)
    load_checked(model, converted, origin)
    return model


def check_exportable(cfg: LlamaConfig) -> None:
    """Refuse a combination of options the target model_type cannot hold (it would load differently)."""
    kind = cfg.model_type
    problems = []
    if cfg.qk_norm != (kind == "qwen3"):
        problems.append("qk_norm is exactly qwen3's")
    if cfg.qkv_bias and kind != "qwen2":
        problems.append("qkv_bias (q/k/v only) is qwen2's")
    if kind == "qwen2" and (not cfg.qkv_bias or cfg.attention_bias):
        problems.append("qwen2 has biases on q/k/v and none on o")
    if cfg.attention_bias and kind not in ("llama", "qwen3"):
        problems.append(f"{kind} has no attention_bias")
    if cfg.mlp_bias and kind != "llama":
        problems.append(f"{kind} has no mlp_bias")
    if cfg.sliding_window is not None:
        if kind == "llama":
            problems.append("llama has no sliding window (save as mistral)")
        if kind in ("mistral", "phi3") and cfg.sliding_layers is not None:
            problems.append(f"{kind} slides on every layer")
        if kind in ("qwen2", "qwen3") and cfg.sliding_layers is not None:
            first = min(cfg.sliding_layers, default=cfg.num_layers)
            if sorted(cfg.sliding_layers) != list(range(first, cfg.num_layers)):
                problems.append(f"{kind} slides on the layers from max_window_layers on")
    if cfg.rope_scaling is not None and kind == "phi3" and cfg.rope_scaling.rope_type != "longrope":
        problems.append("phi3 only has longrope scaling")
    if problems:
        raise CheckpointError(f"cannot save as model_type {kind!r}: {'; '.join(problems)}")


def hf_config_of(cfg: LlamaConfig, is_lm: bool) -> dict:
    check_exportable(cfg)
    kind = cfg.model_type
    rope = rope_to_hf(cfg)
    hf: dict[str, Any] = {
        "architectures": [ARCHITECTURE[kind] + ("ForCausalLM" if is_lm else "Model")],
        "model_type": kind,
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
        "rope_parameters": rope,
        # transformers 4.x reads rope_scaling; 5.x reads rope_parameters (and prefers rope_scaling if set)
        "rope_scaling": None if cfg.rope_scaling is None else {
            k: v for k, v in rope.items() if k != "rope_theta"
        },
        "attention_dropout": cfg.dropout,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "torch_dtype": "float32",
    }
    if kind in ("llama", "qwen3"):
        hf["attention_bias"] = cfg.attention_bias
    if kind == "llama":
        hf["mlp_bias"] = cfg.mlp_bias
    if kind in ("mistral", "phi3"):
        hf["sliding_window"] = cfg.sliding_window
    if kind in ("qwen2", "qwen3"):
        hf["use_sliding_window"] = cfg.sliding_window is not None
        hf["sliding_window"] = cfg.sliding_window
        windows = cfg.layer_windows()
        sliding = [i for i, w in enumerate(windows) if w is not None]
        hf["max_window_layers"] = min(sliding, default=cfg.num_layers)
        hf["layer_types"] = ["full_attention" if w is None else "sliding_attention" for w in windows]
    if kind == "phi3" and cfg.rope_scaling is not None:
        original = cfg.rope_scaling.original_max_positions or cfg.max_positions
        hf["original_max_position_embeddings"] = original
    return hf


def export_state(model: nn.Module, key_map: KeyMap = KEY_MAP) -> dict[str, torch.Tensor]:
    is_lm = isinstance(model, TaskModel)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in model.state_dict().items():
        if key == "head.score.weight" and isinstance(model.head, ScalarHead):
            out["score.weight"] = tensor.detach().contiguous()
            continue
        full = key if is_lm else "backbone." + key
        if full == "head.lm_head.weight" and model.config.tie_embeddings:
            continue
        hf_key = key_map.to_hf(full)
        if hf_key is None:
            raise CheckpointError(f"no checkpoint name for plmkit weight {key!r} (is an adapter attached?)")
        out[hf_key] = tensor.detach().contiguous()
    return out


def export_to_hf(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    if isinstance(model, TaskModel) and isinstance(model.head, ScalarHead):
        if model.head.score.bias is not None:
            raise CheckpointError("a ScalarHead with a bias has no ...ForSequenceClassification layout")
        hf = hf_config_of(model.config, is_lm=False)
        hf["architectures"] = [ARCHITECTURE[model.config.model_type] + "ForSequenceClassification"]
        hf.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
        return hf, export_state(model)
    return hf_config_of(model.config, isinstance(model, TaskModel)), export_state(model)


def build_native(config: dict, architecture: str) -> nn.Module:
    """A model from a plmkit checkpoint's config.json (`config` and `architecture` fields)."""
    cfg = LlamaConfig(**config)
    # Training checkpoints name the class: a TaskModel of a decoder is its causal LM.
    if architecture in ("causal_lm", "TaskModel"):
        return llama_lm(cfg)
    if architecture in ("backbone", "LlamaModel"):
        return LlamaModel(cfg)
    raise CheckpointError(f"config.json: unknown llama architecture {architecture!r}")
