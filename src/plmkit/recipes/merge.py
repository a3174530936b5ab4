"""Fold a LoRA or IA3 adapter into its base model and write a plain checkpoint that transformers loads.

Loads `--pretrained` (a Hugging Face or plmkit directory), attaches the adapter in `--adapter` (plmkit's
`adapter_config.json` + `adapter.safetensors`, or peft's `adapter_config.json` +
`adapter_model.safetensors`), merges W' = W + (alpha/r)·B·A (or IA3's rescaling) into the weights,
removes the wrappers, and writes `--out_dir` with `plmkit.save_hf` (config.json, model.safetensors,
tokenizer). Bottleneck adapters, prompts and prefixes add computation and cannot be merged.

    plmkit merge --pretrained=path/to/base --adapter=runs/sst2/adapter --out_dir=runs/sst2/merged
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from plmkit.errors import ConfigError


@dataclass
class Config:
    pretrained: str = field(default="", metadata={"help": "base model directory (Hugging Face or plmkit)"})
    adapter: str = field(default="", metadata={"help": "adapter directory (plmkit or peft format)"})
    out_dir: str = field(default="", metadata={"help": "where the merged checkpoint is written"})


def run(cfg: Config) -> dict:
    from plmkit.interop.hf import load, save_hf
    from plmkit.interop.peft_format import WEIGHTS_FILE, import_peft_lora
    from plmkit.peft import load_adapter, merge_and_unload, trainable_report

    for key in ("pretrained", "adapter", "out_dir"):
        if not getattr(cfg, key):
            raise ConfigError(f"--{key} is required")
    if Path(cfg.out_dir).resolve() == Path(cfg.pretrained).resolve():
        raise ConfigError(f"--out_dir {cfg.out_dir} is the base model's directory; choose another")
    pretrained = load(cfg.pretrained)
    adapter = Path(cfg.adapter)
    if (adapter / WEIGHTS_FILE).is_file():
        model = import_peft_lora(pretrained.model, adapter)
    else:
        model = load_adapter(pretrained.model, adapter, tokenizer=pretrained.tokenizer)
    report = trainable_report(model)
    model = merge_and_unload(model)
    out = save_hf(model.eval(), cfg.out_dir, tokenizer=pretrained.tokenizer)
    return {"out_dir": str(out), "adapter": str(adapter), "adapter_params": report}
