"""Fold a LoRA or IA3 adapter into its base model and write a plain checkpoint that transformers loads.

Loads the base (`--pretrained`, by default the base the adapter records), rebuilds the task model the
adapter was trained as (a classification, tagging or QA head saved in the adapter directory goes back on
the base's encoder), attaches the adapter in `--adapter` (plmkit's `adapter_config.json` +
`adapter.safetensors`, or peft's `adapter_config.json` + `adapter_model.safetensors`), merges
W' = W + (alpha/r)·B·A (or IA3's rescaling) into the weights, removes the wrappers, and writes `--out_dir`
with `plmkit.save_hf` (config.json with the label names, model.safetensors, tokenizer). The base must be
the weights the adapter was trained on (their fingerprint is recorded): weights the adapter is already
merged into are refused. Bottleneck adapters, prompts and prefixes add computation and cannot be merged:
use them with `plmkit.load_adapter`.

    plmkit merge --adapter=runs/sst2/adapter --out_dir=runs/sst2/merged
    plmkit merge --pretrained=path/to/base --adapter=runs/sst2/adapter --out_dir=runs/sst2/merged
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from plmkit.errors import ConfigError


@dataclass
class Config:
    pretrained: str = field(
        default="", metadata={"help": "base model directory ('': the base the adapter records)"}
    )
    adapter: str = field(default="", metadata={"help": "adapter directory (plmkit or peft format)"})
    out_dir: str = field(default="", metadata={"help": "where the merged checkpoint is written"})


def run(cfg: Config) -> dict:
    from plmkit.interop.hf import load, save_hf
    from plmkit.interop.peft_format import WEIGHTS_FILE, import_peft_lora
    from plmkit.peft import MERGEABLE, core, load_adapter, merge_and_unload, trainable_report
    from plmkit.recipes.finetune import _write_label_names

    for key in ("adapter", "out_dir"):
        if not getattr(cfg, key):
            raise ConfigError(f"--{key} is required")
    if cfg.pretrained and Path(cfg.out_dir).resolve() == Path(cfg.pretrained).resolve():
        raise ConfigError(f"--out_dir {cfg.out_dir} is the base model's directory; choose another")
    adapter = Path(cfg.adapter)
    peft_format = (adapter / WEIGHTS_FILE).is_file()
    meta = {} if peft_format else core.read_adapter_meta(adapter)
    if not peft_format and meta.get("method") not in MERGEABLE:
        raise ConfigError(f"{adapter}: a {meta.get('method')} adapter adds computation and cannot be merged "
                          "into plain weights (only lora and ia3 can); use it with plmkit.load_adapter")
    pretrained_dir = cfg.pretrained or (meta.get("base") or {}).get("path", "")
    if not pretrained_dir:
        raise ConfigError(f"--pretrained is required: {adapter} records no base model")
    if Path(cfg.out_dir).resolve() == Path(pretrained_dir).resolve():
        raise ConfigError(f"--out_dir {cfg.out_dir} is the base model's directory; choose another")
    pretrained = load(pretrained_dir)
    if peft_format:
        model = import_peft_lora(pretrained.model, adapter)
    else:
        model = load_adapter(pretrained.model, adapter, tokenizer=pretrained.tokenizer)
    report = trainable_report(model)
    model = merge_and_unload(model)
    out = save_hf(model.eval(), cfg.out_dir, tokenizer=pretrained.tokenizer)
    if meta.get("labels"):
        _write_label_names(Path(out), meta["labels"])
    return {"out_dir": str(out), "base": str(pretrained_dir), "adapter": str(adapter),
            "adapter_params": report}
