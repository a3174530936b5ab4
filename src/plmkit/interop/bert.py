"""BERT-family checkpoints (`model_type`: bert, roberta, albert, distilbert) <-> `plmkit.models.bert`,
`plmkit.models.albert`, `plmkit.models.distilbert`.

Each family is a declarative key map for the backbone plus one per head kind. The head is chosen by
`architectures[0]` (`BertForMaskedLM`, `RobertaForSequenceClassification`, ...) and returned as
`TaskModel(backbone, head)`; a bare `...Model` returns the backbone, whose forward gives (B, T, D).
Two small transforms are not renames: ALBERT's two-level layer index
`albert_layer_groups.{g}.albert_layers.{j}` is flattened to `layers.{g * inner_group_num + j}`, and
the tied MLM decoder is only read when stored.
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch
from torch import nn

from plmkit.errors import CheckpointError
from plmkit.interop.convert import KeyMap, load_checked
from plmkit.models.albert import AlbertConfig, AlbertModel, albert_mlm, albert_pretraining
from plmkit.models.bert import (
    BertConfig,
    BertModel,
    MaskedLMHead,
    PreTrainingHead,
    bert_mlm,
    bert_pretraining,
)
from plmkit.models.distilbert import DistilBertConfig, DistilBertModel, distilbert_mlm
from plmkit.models.heads import (
    SequenceClassificationHead,
    SpanHead,
    TaskModel,
    TokenClassificationHead,
)

MODEL_TYPES = ("bert", "roberta", "albert", "distilbert")

# model_type -> (class-name prefix in `architectures`, base-model prefix inside head checkpoints)
NAMES = {
    "bert": ("Bert", "bert."),
    "roberta": ("Roberta", "roberta."),
    "albert": ("Albert", "albert."),
    "distilbert": ("DistilBert", "distilbert."),
}
# architectures suffix -> head kind
KINDS = {
    "Model": "bare",
    "ForMaskedLM": "mlm",
    "ForPreTraining": "pretraining",
    "ForSequenceClassification": "classification",
    "ForTokenClassification": "token",
    "ForQuestionAnswering": "qa",
}


def _wb(pairs: dict[str, str]) -> dict[str, str]:
    """Expand module renames to their `.weight` and `.bias` parameters."""
    return {f"{a}.{p}": f"{b}.{p}" for a, b in pairs.items() for p in ("weight", "bias")}


_EMBEDDINGS = {
    "embeddings.word_embeddings.weight": "embed_tokens.weight",
    "embeddings.position_embeddings.weight": "embed_positions.weight",
    "embeddings.token_type_embeddings.weight": "embed_token_types.weight",
    **_wb({"embeddings.LayerNorm": "embed_norm"}),
}

BACKBONE_MAPS = {
    "bert": KeyMap({
        **_EMBEDDINGS,
        **_wb({
            "encoder.layer.{}.attention.self.query": "layers.{}.attn.q_proj",
            "encoder.layer.{}.attention.self.key": "layers.{}.attn.k_proj",
            "encoder.layer.{}.attention.self.value": "layers.{}.attn.v_proj",
            "encoder.layer.{}.attention.output.dense": "layers.{}.attn.o_proj",
            "encoder.layer.{}.attention.output.LayerNorm": "layers.{}.attn_norm",
            "encoder.layer.{}.intermediate.dense": "layers.{}.mlp.up_proj",
            "encoder.layer.{}.output.dense": "layers.{}.mlp.down_proj",
            "encoder.layer.{}.output.LayerNorm": "layers.{}.mlp_norm",
            "pooler.dense": "pooler.dense",
        }),
    }),
    # After the group index is flattened (see `_flatten_albert`).
    "albert": KeyMap({
        **_EMBEDDINGS,
        **_wb({
            "encoder.embedding_hidden_mapping_in": "embed_proj",
            "encoder.albert_layer.{}.attention.query": "layers.{}.attn.q_proj",
            "encoder.albert_layer.{}.attention.key": "layers.{}.attn.k_proj",
            "encoder.albert_layer.{}.attention.value": "layers.{}.attn.v_proj",
            "encoder.albert_layer.{}.attention.dense": "layers.{}.attn.o_proj",
            "encoder.albert_layer.{}.attention.LayerNorm": "layers.{}.attn_norm",
            "encoder.albert_layer.{}.ffn": "layers.{}.mlp.up_proj",
            "encoder.albert_layer.{}.ffn_output": "layers.{}.mlp.down_proj",
            "encoder.albert_layer.{}.full_layer_layer_norm": "layers.{}.mlp_norm",
            "pooler": "pooler.dense",
        }),
    }),
    "distilbert": KeyMap({
        "embeddings.word_embeddings.weight": "embed_tokens.weight",
        "embeddings.position_embeddings.weight": "embed_positions.weight",
        **_wb({
            "embeddings.LayerNorm": "embed_norm",
            "transformer.layer.{}.attention.q_lin": "layers.{}.attn.q_proj",
            "transformer.layer.{}.attention.k_lin": "layers.{}.attn.k_proj",
            "transformer.layer.{}.attention.v_lin": "layers.{}.attn.v_proj",
            "transformer.layer.{}.attention.out_lin": "layers.{}.attn.o_proj",
            "transformer.layer.{}.sa_layer_norm": "layers.{}.attn_norm",
            "transformer.layer.{}.ffn.lin1": "layers.{}.mlp.up_proj",
            "transformer.layer.{}.ffn.lin2": "layers.{}.mlp.down_proj",
            "transformer.layer.{}.output_layer_norm": "layers.{}.mlp_norm",
        }),
    }),
}
BACKBONE_MAPS["roberta"] = BACKBONE_MAPS["bert"]

# MLM heads. The decoder matrix is the token embedding (tied) and usually not stored; its bias is
# stored once under `...predictions.bias` and sometimes again as `...decoder.bias` (same tensor).
_MLM = {
    "bert": {**_wb({"cls.predictions.transform.dense": "dense",
                    "cls.predictions.transform.LayerNorm": "norm"}),
             "cls.predictions.bias": "lm_head.bias", "cls.predictions.decoder.weight": "lm_head.weight",
             "cls.predictions.decoder.bias": "lm_head.bias"},
    "roberta": {**_wb({"lm_head.dense": "dense", "lm_head.layer_norm": "norm"}),
                "lm_head.bias": "lm_head.bias", "lm_head.decoder.weight": "lm_head.weight",
                "lm_head.decoder.bias": "lm_head.bias"},
    "albert": {**_wb({"predictions.dense": "dense", "predictions.LayerNorm": "norm"}),
               "predictions.bias": "lm_head.bias", "predictions.decoder.weight": "lm_head.weight",
               "predictions.decoder.bias": "lm_head.bias"},
    "distilbert": {**_wb({"vocab_transform": "dense", "vocab_layer_norm": "norm"}),
                   "vocab_projector.bias": "lm_head.bias", "vocab_projector.weight": "lm_head.weight"},
}
# Sequence classification: every family's layout is `SequenceClassificationHead(dense, classifier)`.
_CLASSIFICATION = {
    "bert": _wb({"bert.pooler.dense": "dense", "classifier": "classifier"}),
    "roberta": _wb({"classifier.dense": "dense", "classifier.out_proj": "classifier"}),
    "albert": _wb({"albert.pooler": "dense", "classifier": "classifier"}),
    "distilbert": _wb({"pre_classifier": "dense", "classifier": "classifier"}),
}
_PAIR = {
    "bert": _wb({"bert.pooler.dense": "pooler.dense", "cls.seq_relationship": "pair_classifier"}),
    "albert": _wb({"albert.pooler": "pooler.dense", "sop_classifier.classifier": "pair_classifier"}),
}


def head_map(model_type: str, kind: str) -> KeyMap:
    if kind == "mlm":
        return KeyMap(_MLM[model_type])
    if kind == "pretraining":
        return KeyMap({**{k: "mlm." + v for k, v in _MLM[model_type].items()}, **_PAIR[model_type]})
    if kind == "classification":
        return KeyMap(_CLASSIFICATION[model_type])
    if kind == "token":
        return KeyMap(_wb({"classifier": "classifier"}))
    if kind == "qa":
        return KeyMap(_wb({"qa_outputs": "qa_outputs"}))
    return KeyMap({})


# Buffers some checkpoints store; they carry no weights.
IGNORED = re.compile(r"(^|\.)embeddings\.(position_ids|token_type_ids)$")
ALBERT_LAYER = re.compile(r"encoder\.albert_layer_groups\.(\d+)\.albert_layers\.(\d+)\.")
ALBERT_FLAT = re.compile(r"encoder\.albert_layer\.(\d+)\.")


def _flatten_albert(key: str, inner: int) -> str:
    return ALBERT_LAYER.sub(lambda m: f"encoder.albert_layer.{int(m[1]) * inner + int(m[2])}.", key)


def _unflatten_albert(key: str, inner: int) -> str:
    return ALBERT_FLAT.sub(
        lambda m: f"encoder.albert_layer_groups.{int(m[1]) // inner}.albert_layers.{int(m[1]) % inner}.", key
    )


# ------------------------------------------------------------------------------------------------ configs


def _get(hf: dict, key: str, default: object = None) -> object:
    if key in hf:
        return hf[key]
    if default is None:
        raise CheckpointError(f"config.json: missing key {key!r} for model_type {hf.get('model_type')!r}")
    return default


def config_from_hf(hf: dict) -> BertConfig | AlbertConfig | DistilBertConfig:
    model_type = hf["model_type"]
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(
            f"config.json: position_embedding_type {hf['position_embedding_type']!r} is not supported "
            "(only 'absolute')"
        )
    if model_type == "distilbert":
        return DistilBertConfig(
            vocab_size=_get(hf, "vocab_size"), d_model=_get(hf, "dim"), num_layers=_get(hf, "n_layers"),
            num_heads=_get(hf, "n_heads"), d_ff=_get(hf, "hidden_dim"),
            max_positions=_get(hf, "max_position_embeddings", 512), activation=_get(hf, "activation", "gelu"),
            dropout=float(_get(hf, "dropout", 0.1)),
            attention_dropout=float(_get(hf, "attention_dropout", 0.1)),
            pad_token_id=_get(hf, "pad_token_id", 0) or 0, init_std=_get(hf, "initializer_range", 0.02),
        )
    common = dict(
        vocab_size=_get(hf, "vocab_size"), d_model=_get(hf, "hidden_size"),
        num_layers=_get(hf, "num_hidden_layers"), num_heads=_get(hf, "num_attention_heads"),
        d_ff=_get(hf, "intermediate_size"), max_positions=_get(hf, "max_position_embeddings", 512),
        type_vocab_size=_get(hf, "type_vocab_size", 2), activation=_get(hf, "hidden_act", "gelu"),
        dropout=float(_get(hf, "hidden_dropout_prob", 0.1)),
        attention_dropout=float(_get(hf, "attention_probs_dropout_prob", 0.1)),
        norm_eps=float(_get(hf, "layer_norm_eps", 1e-12)), pad_token_id=_get(hf, "pad_token_id", 0) or 0,
        init_std=_get(hf, "initializer_range", 0.02),
    )
    if model_type == "albert":
        return AlbertConfig(**common, embedding_size=_get(hf, "embedding_size", 128),
                            num_groups=_get(hf, "num_hidden_groups", 1),
                            inner_group_size=_get(hf, "inner_group_num", 1))
    return BertConfig(**common, model_type=model_type)


def config_to_hf(cfg: BertConfig | AlbertConfig | DistilBertConfig) -> dict:
    if isinstance(cfg, DistilBertConfig):
        return {
            "model_type": "distilbert", "vocab_size": cfg.vocab_size, "dim": cfg.d_model,
            "n_layers": cfg.num_layers, "n_heads": cfg.num_heads, "hidden_dim": cfg.d_ff,
            "max_position_embeddings": cfg.max_positions, "activation": cfg.activation,
            "dropout": cfg.dropout, "attention_dropout": cfg.attention_dropout,
            "pad_token_id": cfg.pad_token_id,
            "initializer_range": cfg.init_std, "sinusoidal_pos_embds": False, "tie_weights_": True,
            "tie_word_embeddings": True,
        }
    hf = {
        "model_type": cfg.model_type, "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.d_ff, "max_position_embeddings": cfg.max_positions,
        "type_vocab_size": cfg.type_vocab_size, "hidden_act": cfg.activation,
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attention_dropout,
        "layer_norm_eps": cfg.norm_eps, "pad_token_id": cfg.pad_token_id, "initializer_range": cfg.init_std,
        "position_embedding_type": "absolute", "tie_word_embeddings": True,
    }
    if isinstance(cfg, AlbertConfig):
        hf.update(embedding_size=cfg.embedding_size, num_hidden_groups=cfg.num_groups,
                  inner_group_num=cfg.inner_group_size, classifier_dropout_prob=cfg.dropout)
    return hf


# ------------------------------------------------------------------------------------------------- models


def _num_labels(hf: dict) -> int:
    if isinstance(hf.get("id2label"), dict) and hf["id2label"]:
        return len(hf["id2label"])
    return int(hf.get("num_labels", 2))


def _classifier_dropout(hf: dict, cfg: BertConfig | AlbertConfig | DistilBertConfig) -> float:
    for key in ("classifier_dropout", "classifier_dropout_prob", "seq_classif_dropout"):
        if hf.get(key) is not None:
            return float(hf[key])
    return cfg.dropout


def _backbone(cfg: BertConfig | AlbertConfig | DistilBertConfig) -> nn.Module:
    if isinstance(cfg, AlbertConfig):
        return AlbertModel(cfg)
    if isinstance(cfg, DistilBertConfig):
        return DistilBertModel(cfg)
    return BertModel(cfg)


def build_model(
    cfg: BertConfig | AlbertConfig | DistilBertConfig, kind: str, hf: dict | None = None
) -> nn.Module:
    """An untrained model of the given head kind ("bare", "mlm", "pretraining", "classification",
    "token", "qa") laid out like the matching Hugging Face class."""
    hf = hf or {}
    model_type = cfg.model_type
    if kind == "mlm":
        return {"albert": albert_mlm, "distilbert": distilbert_mlm}.get(model_type, bert_mlm)(cfg)
    if kind == "pretraining":
        if model_type not in _PAIR:
            raise CheckpointError(f"config.json: {model_type} has no ...ForPreTraining model")
        return (albert_pretraining if model_type == "albert" else bert_pretraining)(cfg)
    if kind == "bare":
        return _backbone(cfg)
    if hasattr(cfg, "add_pooler"):
        # The pooler of a classification checkpoint belongs to its head (`dense`); other heads have none.
        cfg = replace(cfg, add_pooler=False)
    backbone = _backbone(cfg)
    dropout = _classifier_dropout(hf, cfg)
    if kind == "classification":
        activation = "relu" if model_type == "distilbert" else "tanh"
        head: nn.Module = SequenceClassificationHead(
            cfg.d_model, _num_labels(hf), pooling="cls", activation=activation, dropout=dropout,
            dropout_before_dense=model_type == "roberta",
        )
    elif kind == "token":
        head = TokenClassificationHead(cfg.d_model, _num_labels(hf), dropout=dropout)
    elif kind == "qa":
        head = SpanHead(cfg.d_model, dropout=float(hf.get("qa_dropout", 0.0)))
    else:
        raise CheckpointError(f"unknown head kind {kind!r}")
    return TaskModel(backbone, head)


def _kind(hf: dict) -> str:
    prefix = NAMES[hf["model_type"]][0]
    arch = (hf.get("architectures") or [prefix + "Model"])[0]
    kind = KINDS.get(arch.removeprefix(prefix)) if arch.startswith(prefix) else None
    if kind is None:
        known = ", ".join(prefix + k for k in KINDS)
        raise CheckpointError(f"config.json: architecture {arch!r} is not supported (known: {known})")
    return kind


def build_from_hf(hf_config: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A plmkit model from a BERT-family config.json and state dict, the head from `architectures`."""
    model_type = hf_config["model_type"]
    kind = _kind(hf_config)
    cfg = config_from_hf(hf_config)
    base = NAMES[model_type][1]
    if kind == "bare" and isinstance(cfg, (BertConfig, AlbertConfig)):
        # Keep a stored pooler so that saving the model back writes it too.
        cfg.add_pooler = any(k.removeprefix(base).startswith("pooler") for k in state_dict)
    model = build_model(cfg, kind, hf_config)
    heads = head_map(model_type, kind)
    backbone_map = BACKBONE_MAPS[model_type]
    inner = getattr(cfg, "inner_group_size", 1)
    backbone_prefix = "" if kind == "bare" else "backbone."
    converted: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for hf_key, tensor in state_dict.items():
        if IGNORED.search(hf_key):
            continue
        target = heads.to_plmkit(hf_key)
        if target is not None:
            target = "head." + target
        else:
            key = _flatten_albert(hf_key.removeprefix(base), inner)
            mapped = backbone_map.to_plmkit(key)
            if mapped is None:
                raise CheckpointError(f"unexpected weight {hf_key!r} in {model_type} checkpoint")
            target = backbone_prefix + mapped
        converted[target], origin[target] = tensor, hf_key
    load_checked(model, converted, origin)
    return model


def _head_kind(model: nn.Module) -> str:
    if not isinstance(model, TaskModel):
        return "bare"
    head = model.head
    if isinstance(head, MaskedLMHead):
        return "mlm"
    if isinstance(head, PreTrainingHead):
        return "pretraining"
    if isinstance(head, SequenceClassificationHead):
        return "classification"
    if isinstance(head, TokenClassificationHead):
        return "token"
    if isinstance(head, SpanHead):
        return "qa"
    raise CheckpointError(f"no Hugging Face class for a {type(head).__name__} on a BERT-family backbone")


def _check_classification(model_type: str, head: SequenceClassificationHead) -> None:
    want = {"distilbert": "relu"}.get(model_type, "tanh")
    if head.pooling != "cls" or head.activation_name != want or head.dropout_before_dense != (
            model_type == "roberta"):
        raise CheckpointError(
            f"a SequenceClassificationHead with pooling={head.pooling!r}, activation={head.activation_name!r}"
            f" has no {NAMES[model_type][0]}ForSequenceClassification layout (needs pooling='cls', "
            f"activation={want!r}, dropout_before_dense={model_type == 'roberta'})"
        )


def export_to_hf(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json dict, HF-named state dict) for the matching `...Model` / `...For...` class."""
    backbone = model.backbone if isinstance(model, TaskModel) else model
    cfg = backbone.config
    model_type = cfg.model_type
    kind = _head_kind(model)
    class_prefix, base = NAMES[model_type]
    if kind == "classification":
        _check_classification(model_type, model.head)
    if kind == "pretraining" and model_type not in _PAIR:
        raise CheckpointError(f"{model_type} has no ...ForPreTraining class")
    inner = getattr(cfg, "inner_group_size", 1)
    backbone_map = BACKBONE_MAPS[model_type]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in backbone.state_dict().items():
        hf_key = backbone_map.to_hf(key)
        if hf_key is None:
            raise CheckpointError(
                f"no {model_type} checkpoint name for plmkit weight {key!r} (is an adapter attached?)"
            )
        out[("" if kind == "bare" else base) + _unflatten_albert(hf_key, inner)] = tensor
    if kind != "bare":
        heads = head_map(model_type, kind)
        for key, tensor in model.head.state_dict().items():
            # The tied decoder matrix is the embedding: transformers re-ties it on load.
            if key.endswith("lm_head.weight"):
                continue
            hf_key = heads.to_hf(key)
            if hf_key is None:
                raise CheckpointError(f"no {model_type} checkpoint name for head weight {key!r}")
            out[hf_key] = tensor
    hf = config_to_hf(cfg)
    hf["architectures"] = [class_prefix + next(k for k, v in KINDS.items() if v == kind)]
    if kind in ("classification", "token"):
        n = model.head.num_labels
        hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(n)}
        hf["label2id"] = {f"LABEL_{i}": i for i in range(n)}
    hf["torch_dtype"] = "float32"
    return hf, {k: v.detach().contiguous() for k, v in out.items()}


def build_native(config: dict, architecture: str) -> nn.Module:
    """A model from a plmkit checkpoint's config.json (`config` and `architecture` fields): a backbone
    class name gives the backbone, a `TaskModel` (what pretraining saves) the masked LM."""
    model_type = config.get("model_type")
    cls = {"albert": AlbertConfig, "distilbert": DistilBertConfig}.get(model_type, BertConfig)
    try:
        cfg = cls(**config)
    except TypeError as e:
        raise CheckpointError(f"config.json: bad {model_type} config ({e})") from None
    if architecture in ("BertModel", "AlbertModel", "DistilBertModel", "backbone"):
        return _backbone(cfg)
    if architecture in ("TaskModel", "masked_lm"):
        return build_model(cfg, "mlm")
    raise CheckpointError(f"config.json: unknown {model_type} architecture {architecture!r}")

