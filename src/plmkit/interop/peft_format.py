"""LoRA adapters <-> Hugging Face peft's format (`adapter_config.json` + `adapter_model.safetensors`).

A peft LoRA file names each adapted module by its transformers path, `base_model.model.<path>.lora_A.weight`
(r, in) and `...lora_B.weight` (out, r), with the scale alpha/r (or alpha/sqrt(r), rsLoRA) in the config.
plmkit's module names map to those paths through each family's interop key map. GPT-2 needs one small
transform: transformers fuses q/k/v into one Conv1D `c_attn`, so q/k/v updates of ranks r_q, r_k, r_v
become one update of rank r_q + r_k + r_v with A stacked and B block-diagonal (exact), and a c_attn
update splits back into three updates that share A. Conv1D layers are flagged `fan_in_fan_out`.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from plmkit.errors import CheckpointError, ConfigError
from plmkit.interop import bert as bert_interop
from plmkit.interop import gemma2 as gemma2_interop
from plmkit.interop import gpt2 as gpt2_interop
from plmkit.interop import llama as llama_interop
from plmkit.io import atomic_dir, read_safetensors
from plmkit.models.heads import TaskModel
from plmkit.peft import REGISTRY_ATTR, LoRAConfig, LoRALinear, apply_lora, core

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
_GPT2_QKV = re.compile(r"^layers\.(\d+)\.attn\.([qkv])_proj$")


def _weight_to_module(key: str | None) -> str | None:
    return None if key is None else key.removesuffix(".weight")


def hf_module(model: nn.Module, name: str) -> tuple[str, int | None, int]:
    """transformers module path of plmkit module `name`, and (for fused projections) which of how many
    equal row blocks it is: (path, None, 1) when unfused."""
    model_type = getattr(model.config, "model_type", None)
    wrapped = isinstance(model, TaskModel)
    inner = name.removeprefix("backbone.") if wrapped else name
    if wrapped and (name == inner or name.startswith("head.")):
        raise ConfigError(f"peft format: {name!r} is not part of the backbone")
    path: str | None = None
    index: int | None = None
    parts = 1
    if model_type == "gpt2":
        root = "transformer." if wrapped else ""
        fused = _GPT2_QKV.match(inner)
        if fused:
            path, index, parts = f"{root}h.{fused.group(1)}.attn.c_attn", "qkv".index(fused.group(2)), 3
        else:
            mapped = _weight_to_module(gpt2_interop.KEY_MAP.to_hf(inner + ".weight"))
            path = None if mapped is None else root + mapped
    elif model_type in ("llama", "mistral", "qwen2", "qwen3", "gemma2"):  # one layout (gemma2: its norms)
        key_map = gemma2_interop.KEY_MAP if model_type == "gemma2" else llama_interop.KEY_MAP
        mapped = _weight_to_module(key_map.to_hf("backbone." + inner + ".weight"))
        path = mapped if mapped is None or wrapped else mapped.removeprefix("model.")
    elif model_type in ("bert", "roberta"):
        mapped = _weight_to_module(bert_interop.BACKBONE_MAPS[model_type].to_hf(inner + ".weight"))
        base = bert_interop.NAMES[model_type][1]
        path = mapped if mapped is None or not wrapped else base + mapped
    else:
        raise ConfigError(
            f"peft format: model_type {model_type!r} is not supported "
            "(gpt2, llama, mistral, qwen2, qwen3, gemma2, bert, roberta)"
        )
    if path is None:
        raise ConfigError(f"peft format: no transformers name for plmkit module {name!r}")
    return path, index, parts


def _fan_in_fan_out(model: nn.Module) -> bool:
    return getattr(model.config, "model_type", None) == "gpt2"  # Conv1D stores weights (in, out)


def _task_type(model: nn.Module) -> str | None:
    if not isinstance(model, TaskModel):
        return None
    head = type(model.head).__name__
    return {"LMHead": "CAUSAL_LM", "SequenceClassificationHead": "SEQ_CLS",
            "TokenClassificationHead": "TOKEN_CLS", "SpanHead": "QUESTION_ANS"}.get(head)


def export_peft_lora(model: nn.Module, path: str | os.PathLike, base_model_name_or_path: str = "") -> Path:
    """Write the active LoRA adapter of `model` in peft's format into directory `path`."""
    modules: dict[str, dict] = {}  # hf path -> {"parts": n, "blocks": {index: LoRAWeights}}
    for where, host in core.hosts(model):
        if not isinstance(host, LoRALinear) or host.active is None:
            if host.active is not None:
                raise ConfigError(f"peft format: {where!r} holds a {type(host).__name__}; only LoRA exports")
            continue
        if host.merged:
            raise ConfigError(f"peft format: {where!r} is merged; unmerge before exporting")
        hf, index, parts = hf_module(model, where)
        entry = modules.setdefault(hf, {"parts": parts, "blocks": {}, "out": host.out_features})
        entry["blocks"][index] = host.adapters[host.active]
    if not modules:
        raise ConfigError("peft format: the model has no active LoRA adapter to export")
    registered = getattr(model, REGISTRY_ATTR, {}).get(_active_name(model), ("", {}))
    rslora = bool(registered[1].get("rslora", False))
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    dropout = 0.0
    for hf, entry in modules.items():
        order = sorted(entry["blocks"], key=lambda i: -1 if i is None else i)
        blocks = [(i, entry["blocks"][i]) for i in order]
        a_rows = []
        rank = sum(lora.lora_A.weight.shape[0] for _, lora in blocks)
        scale = blocks[0][1].scale
        out = entry["out"] * entry["parts"]
        col = 0
        b = torch.zeros(out, rank, dtype=blocks[0][1].lora_B.weight.dtype)
        for index, lora in blocks:
            r = lora.lora_A.weight.shape[0]
            # Different scales inside one fused module cannot share one alpha: fold each into its B.
            factor = lora.scale / scale
            a_rows.append(lora.lora_A.weight.detach().cpu())
            first = 0 if index is None else index * entry["out"]
            rows = slice(first, first + entry["out"])
            b[rows, col:col + r] = lora.lora_B.weight.detach().cpu() * factor
            col += r
            dropout = lora.dropout.p
        tensors[f"{PREFIX}{hf}.lora_A.weight"] = torch.cat(a_rows).contiguous()
        tensors[f"{PREFIX}{hf}.lora_B.weight"] = b.contiguous()
        ranks[hf] = rank
        alphas[hf] = scale * (math.sqrt(rank) if rslora else rank)
    r0 = max(set(ranks.values()), key=list(ranks.values()).count)
    a0 = max(set(alphas.values()), key=list(alphas.values()).count)
    config = {
        "peft_type": "LORA",
        "task_type": _task_type(model),
        "base_model_name_or_path": base_model_name_or_path or None,
        "r": r0,
        "lora_alpha": a0,
        "lora_dropout": dropout,
        "target_modules": sorted(modules),
        "fan_in_fan_out": _fan_in_fan_out(model),
        "bias": "none",
        "use_rslora": rslora,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "rank_pattern": {re.escape(k): v for k, v in ranks.items() if v != r0},
        "alpha_pattern": {re.escape(k): v for k, v in alphas.items() if v != a0},
        "inference_mode": True,
    }
    path = Path(path)
    # the whole directory is published at once: a killed save leaves the previous adapter whole
    with atomic_dir(path, replaces=CONFIG_FILE) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return path


def _active_name(model: nn.Module) -> str | None:
    for _, host in core.hosts(model):
        if host.active is not None:
            return host.active
    return None


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def import_peft_lora(model: nn.Module, path: str | os.PathLike, name: str = "default") -> nn.Module:
    """Attach the LoRA adapter stored in peft's format at `path` to the plmkit `model` as adapter `name`."""
    path = Path(path)
    cfg_file, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no {CONFIG_FILE} (not a peft adapter directory)")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if cfg.get("peft_type") != "LORA":
        raise CheckpointError(f"{cfg_file}: peft_type {cfg.get('peft_type')!r} is not supported (only LORA)")
    for key, ok in (("bias", cfg.get("bias", "none") == "none"), ("use_dora", not cfg.get("use_dora")),
                    ("modules_to_save", not cfg.get("modules_to_save"))):
        if not ok:
            raise CheckpointError(f"{cfg_file}: {key}={cfg.get(key)!r} is not supported")
    if not weights.is_file():
        raise CheckpointError(f"{path}: no {WEIGHTS_FILE}")
    state, _ = read_safetensors(weights)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        m = re.match(r"^(?:base_model\.model\.)?(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight$", key)
        if m is None:
            raise CheckpointError(f"{weights}: unexpected tensor {key!r} (only lora_A/B of linear layers)")
        pairs.setdefault(m.group(1), {})[m.group(2)] = tensor
    # Every linear module of the backbone, by transformers path.
    by_hf: dict[str, list[tuple[str, int | None, int]]] = {}
    for plm in core.find_targets(model, "all-linear", "peft format"):
        try:
            hf, index, parts = hf_module(model, plm)
        except ConfigError:
            continue
        by_hf.setdefault(hf, []).append((plm, index, parts))
    rslora = bool(cfg.get("use_rslora", False))
    for hf, ab in pairs.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise CheckpointError(f"{weights}: module {hf!r} lacks lora_A or lora_B")
        targets = by_hf.get(hf)
        if not targets:
            raise CheckpointError(f"{weights}: module {hf!r} has no counterpart in this plmkit model")
        a, b = ab["lora_A"], ab["lora_B"]
        r = a.shape[0]
        alpha = float(_pattern_value(cfg.get("alpha_pattern"), hf, cfg.get("lora_alpha", 8)))
        for plm, index, parts in targets:
            host = model.get_submodule(plm)
            out = host.out_features
            if b.shape != (out * parts, r) or a.shape[1] != host.in_features:
                raise CheckpointError(
                    f"{weights}: module {hf!r} has lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)} but the "
                    f"model's layer is {out * parts}x{host.in_features}"
                )
            lcfg = LoRAConfig(r=r, alpha=alpha, dropout=float(cfg.get("lora_dropout", 0.0)),
                              targets=plm, rslora=rslora)
            apply_lora(model, lcfg, name)
            lora = model.get_submodule(plm).adapters[name]
            rows = slice(None) if index is None else slice(index * out, (index + 1) * out)
            with torch.no_grad():
                lora.lora_A.weight.copy_(a)
                lora.lora_B.weight.copy_(b[rows])
    registry = dict(getattr(model, REGISTRY_ATTR, None) or {})
    first = next(iter(pairs.values()))["lora_A"].shape[0]
    targets = ",".join(p for t in pairs for p, _, _ in by_hf[t])
    registry[name] = ("lora", {"r": first, "alpha": float(cfg.get("lora_alpha", 8)),
                               "dropout": float(cfg.get("lora_dropout", 0.0)), "targets": targets,
                               "rslora": rslora})
    setattr(model, REGISTRY_ATTR, registry)
    core.set_active_adapter(model, name)
    return model
