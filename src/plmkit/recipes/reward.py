"""Train a reward model on preference pairs (Bradley–Terry; RLHF's second stage).

Loads `--pretrained` (any plmkit family: a decoder scores the last real token, an encoder its [CLS]
through the family's classification layout, or the mean of its tokens with `--pooling=mean`), puts a
fresh one-output head on it, reads preference JSONL (`prompt`/`chosen`/`rejected` with an optional soft
label `p_chosen`, or HH-RLHF transcripts, split automatically), and trains −log σ(r_chosen − r_rejected)
(+ `--center_coef` · (r_chosen + r_rejected)²) through the one training loop. Without `--data.eval_file`
a fixed-seed share `--data.eval_fraction` of the pairs is held out. Reports held-out pairwise accuracy.

    plmkit reward --pretrained=path/to/minilm --data.train_file=hh.jsonl.gz --data.eval_fraction=0.2 \\
        --train.max_steps=300 --out_dir=runs/rm

Writes into `--out_dir`: `model/`, which transformers loads as `...ForSequenceClassification` with
num_labels=1 (not for `--pooling=mean`, which has no transformers class; then only the loop's
checkpoints), `adapter/` for a PEFT run, and `reward_report.json`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.peft import PeftOptions
from plmkit.recipes.sft import limit, pad_id, require, train_dir
from plmkit.training import TrainConfig
from plmkit.training.runtime import DEVICE_HELP


@dataclass
class DataConfig:
    train_file: str = field(default="", metadata={"help": "preference JSONL (required)"})
    eval_file: str = field(
        default="", metadata={"help": "held-out preference JSONL ('': split the train file)"}
    )
    eval_fraction: float = field(
        default=0.0, metadata={"help": "without eval_file: hold out this share of the pairs (fixed seed)"}
    )
    split_seed: int = field(default=0, metadata={"help": "seed of the train/held-out split"})
    max_length: int = field(default=512, metadata={"help": "tokens per prompt + response"})
    max_prompt_length: int = field(
        default=0, metadata={"help": "keep only the last N prompt tokens (0: all)"}
    )
    batch_size: int = field(default=8, metadata={"help": "pairs per micro-batch"})
    eval_batch_size: int = field(default=32, metadata={"help": "pairs per evaluation batch"})
    max_train_examples: int = field(default=0, metadata={"help": "use the first N training pairs (0: all)"})
    chat_template: bool = field(
        default=True, metadata={"help": "render messages with the checkpoint's chat template if it has one"}
    )


def _default_train() -> TrainConfig:
    return TrainConfig(max_steps=300, lr=2e-5, schedule="linear", min_lr_ratio=0.0, warmup_steps=0,
                       weight_decay=0.0)


@dataclass
class Config:
    pretrained: str = field(default="", metadata={"help": "backbone directory (Hugging Face or plmkit)"})
    out_dir: str = field(default="", metadata={"help": "where model/ and the report go ('': nowhere)"})
    pooling: str = field(default="cls", metadata={"help": "encoders: cls or mean (decoders: last token)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout of the head"})
    center_coef: float = field(default=0.0, metadata={"help": "reward centering: coef · (r_c + r_r)²"})
    seed: int = field(default=0, metadata={"help": "seed of the head's initialization and the data order"})
    device: str = field(default="auto", metadata={"help": "where to train: " + DEVICE_HELP})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "preference data"})
    train: TrainConfig = field(default_factory=_default_train, metadata={"help": "training loop"})
    peft: PeftOptions = field(
        default_factory=PeftOptions, metadata={"help": "parameter-efficient fine-tuning (method '': full)"}
    )


def split_pairs(pairs: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """(train, held-out): a fixed-seed permutation, the last `eval_fraction` of it held out."""
    if not 0.0 < eval_fraction < 1.0:
        raise ConfigError(f"--data.eval_fraction={eval_fraction}: must be in (0, 1)")
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = max(1, round(len(pairs) * eval_fraction))
    return [pairs[i] for i in order[: len(pairs) - n_eval]], [pairs[i] for i in order[len(pairs) - n_eval:]]


def run(cfg: Config) -> dict:
    from plmkit.alignment.records import collate_preferences, read_preferences
    from plmkit.alignment.reward import (
        ENCODER_TYPES,
        encode_reward_pairs,
        evaluate_pairs,
        reward_model,
        reward_step,
        save_reward_model,
    )
    from plmkit.data.batches import ShuffledBatches
    from plmkit.interop.hf import load
    from plmkit.io import write_json
    from plmkit.peft import apply_peft, trainable_report
    from plmkit.recipes.sft import chat_template, fit_length
    from plmkit.training import distributed, train

    require(cfg, "pretrained", "data.train_file")
    d = cfg.data
    if not d.eval_file and not d.eval_fraction:
        raise ConfigError("--data.eval_file or --data.eval_fraction is required (held-out accuracy)")
    info = distributed.init_distributed(cfg.device)
    pretrained = load(cfg.pretrained)
    tokenizer = pretrained.require_tokenizer()
    d = replace(d, max_length=fit_length(d.max_length, pretrained.model))
    template, render = chat_template(cfg.pretrained, d.chat_template, tokenizer)
    pairs = read_preferences(d.train_file, template, **render)
    if d.eval_file:
        train_pairs, eval_pairs = pairs, read_preferences(d.eval_file, template, **render)
    else:
        train_pairs, eval_pairs = split_pairs(pairs, d.eval_fraction, d.split_seed)
    train_pairs = limit(train_pairs, d.max_train_examples)

    torch.manual_seed(cfg.seed)
    model = reward_model(pretrained.model, cfg.pooling, cfg.dropout)
    causal = getattr(model.config, "model_type", "") not in ENCODER_TYPES
    max_prompt = d.max_prompt_length or None
    special = template is None
    train_rows = encode_reward_pairs(tokenizer, train_pairs, d.max_length, causal, max_prompt,
                                     special_tokens=special)
    eval_rows = encode_reward_pairs(tokenizer, eval_pairs, d.max_length, causal, max_prompt,
                                    special_tokens=special)
    exportable = not (not causal and cfg.pooling == "mean")
    if cfg.peft.method:
        model = apply_peft(model, cfg.peft, modules_to_save=cfg.peft.modules_to_save or "head")
    if info.is_main:
        print(trainable_report(model), flush=True)
    pad = pad_id(tokenizer) if causal else (tokenizer.pad_id or 0)
    batches = ShuffledBatches(train_rows, lambda xs: collate_preferences(xs, pad), d.batch_size,
                              seed=cfg.seed, rank=info.rank, world_size=info.world_size)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        return {f"eval_{k}": v for k, v in evaluate_pairs(m, eval_rows, pad, d.eval_batch_size).items()}

    model.to(info.device)
    start = time.perf_counter()
    result = train(model, reward_step(cfg.center_coef), batches, train_dir(cfg.out_dir, cfg.train),
                   eval_fn=eval_fn, tokenizer=tokenizer)
    summary: dict[str, Any] = {
        "steps": result.step,
        "first_loss": result.history[0]["loss"],
        "final_loss": result.history[-1]["loss"],
        "train_seconds": time.perf_counter() - start,
        "train_pairs": len(train_rows),
        "eval_pairs": len(eval_rows),
        **result.final_eval,
    }
    model = distributed.full_model(model)
    if cfg.out_dir and info.is_main:
        out = Path(cfg.out_dir)
        if cfg.peft.method:
            from plmkit.peft import merge_and_unload, save_adapter

            summary["adapter_dir"] = str(save_adapter(model, out / "adapter", base=cfg.pretrained))
            model = merge_and_unload(model) if cfg.peft.method in ("lora", "ia3") else None
        if model is not None and exportable:
            summary["model_dir"] = str(save_reward_model(model, out / "model", tokenizer))
        write_json(out / "reward_report.json", summary)
    distributed.barrier()
    return summary
