"""Supervised fine-tuning of a causal LM on prompt/response pairs (instruction tuning, RLHF's first stage).

Loads `--pretrained` (a Hugging Face or plmkit causal LM) and `--data.train_file` (JSONL: `prompt` and
`response`, or `messages` with roles; see `plmkit.alignment.records`), renders `messages` with the
checkpoint's chat template (sandboxed Jinja) when it ships one, else the plain Human/Assistant format,
appends EOS to every response, and trains the next-token loss on the response tokens only (EOS included)
through the one training loop. `--peft.method=lora` trains adapters instead of all weights;
`--data.packing` packs several examples into each row of `--data.max_length` tokens, each attending only
to itself (a block-diagonal causal mask, positions restarting per example).

    plmkit sft --pretrained=path/to/gpt2 --data.train_file=sft.jsonl --data.eval_file=sft_dev.jsonl \\
        --train.max_steps=200 --out_dir=runs/sft

Writes into `--out_dir`: `model/` (a Hugging Face checkpoint; LoRA is merged in), `adapter/` for a PEFT
run, the loop's `metrics.jsonl` and checkpoints under `train/`, and `sft_report.json` (first and final
loss, the evaluation loss on the response tokens).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.peft import PeftOptions
from plmkit.training import TrainConfig
from plmkit.training.runtime import DEVICE_HELP


@dataclass
class DataConfig:
    train_file: str = field(default="", metadata={"help": "training JSONL (required)"})
    eval_file: str = field(default="", metadata={"help": "evaluation JSONL ('': none)"})
    max_length: int = field(default=512, metadata={"help": "tokens per prompt + response (+ EOS)"})
    max_prompt_length: int = field(
        default=0, metadata={"help": "keep only the last N prompt tokens (0: no limit)"}
    )
    batch_size: int = field(default=8, metadata={"help": "examples per micro-batch"})
    eval_batch_size: int = field(default=16, metadata={"help": "examples per evaluation batch"})
    max_train_examples: int = field(default=0, metadata={"help": "use the first N training records (0: all)"})
    max_eval_examples: int = field(
        default=0, metadata={"help": "use the first N evaluation records (0: all)"}
    )
    chat_template: bool = field(
        default=True, metadata={"help": "render messages with the checkpoint's chat template if it has one"}
    )
    packing: bool = field(
        default=False, metadata={"help": "pack examples into rows of max_length (no attention across them)"}
    )


def _default_train() -> TrainConfig:
    return TrainConfig(max_steps=200, lr=2e-5, schedule="cosine", min_lr_ratio=0.0, warmup_steps=10,
                       weight_decay=0.0)


@dataclass
class Config:
    pretrained: str = field(default="", metadata={"help": "causal LM directory (Hugging Face or plmkit)"})
    out_dir: str = field(
        default="", metadata={"help": "where model/, adapter/ and the report go ('': nowhere)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the data order"})
    device: str = field(default="auto", metadata={"help": "where to train: " + DEVICE_HELP})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "prompt/response data"})
    train: TrainConfig = field(default_factory=_default_train, metadata={"help": "training loop"})
    peft: PeftOptions = field(
        default_factory=PeftOptions, metadata={"help": "parameter-efficient fine-tuning (method '': full)"}
    )


# ---- shared by the alignment recipes (sft, reward, dpo) ------------------------------------------------


def limit(records: list, n: int) -> list:
    return records[:n] if n > 0 else records


def chat_template(pretrained: str, enabled: bool, tokenizer: Any) -> tuple[str | None, dict[str, str]]:
    """The checkpoint's chat template (None: the plain Human/Assistant format) and the special-token texts
    it is rendered with. A rendered prompt carries its own BOS, so it is encoded without special tokens."""
    from plmkit.data.chat import load_chat_template

    template = load_chat_template(pretrained) if enabled else None
    roles = getattr(tokenizer, "special_tokens", None) or {}
    render = {f"{role}_token": roles.get(role, "") for role in ("bos", "eos")}
    return template, render


def fit_length(max_length: int, model: Any) -> int:
    """`--data.max_length`, capped at the model's context window: longer rows would index past the position
    embeddings deep inside the first forward pass (as finetune caps its lengths)."""
    positions = getattr(getattr(model, "config", None), "max_positions", None)
    if positions is not None and max_length > positions:
        print(f"note: --data.max_length={max_length} is longer than the model's context window; "
              f"rows are cut to {positions} tokens", file=sys.stderr, flush=True)
        return positions
    return max_length


def pad_id(tokenizer: Any) -> int:
    """The padding id of batches: the tokenizer's pad token, else its EOS (masked out either way)."""
    from plmkit.alignment.records import require_eos

    return tokenizer.pad_id if tokenizer.pad_id is not None else require_eos(tokenizer)


def train_dir(cfg_out_dir: str, train: TrainConfig) -> TrainConfig:
    """The loop's own out_dir (metrics and checkpoints) under the recipe's, unless one is given."""
    if cfg_out_dir and not train.out_dir:
        return replace(train, out_dir=str(Path(cfg_out_dir) / "train"))
    return train


def require(cfg: Any, *keys: str) -> None:
    for key in keys:
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if not value:
            raise ConfigError(f"--{key} is required")


def save_policy(model: nn.Module, out: Path, tokenizer: Any, peft_method: str, base: str) -> dict[str, str]:
    """model/ (LoRA/IA3 merged in) and adapter/ for a PEFT run; returns where they went."""
    from plmkit.interop.hf import save_hf

    where: dict[str, str] = {}
    if peft_method:
        from plmkit.peft import merge_and_unload, save_adapter

        where["adapter_dir"] = str(save_adapter(model, out / "adapter", base=base))
        if peft_method not in ("lora", "ia3"):
            return where
        model = merge_and_unload(model)
    where["model_dir"] = str(save_hf(model, out / "model", tokenizer=tokenizer))
    return where


@torch.no_grad()
def response_loss(model: nn.Module, rows: list[dict], pad: int, batch_size: int) -> float:
    """Mean negative log-likelihood per response token (EOS included) of encoded prompt/response rows."""
    from plmkit.alignment.records import collate_prompt_responses
    from plmkit.alignment.sft import sft_loss

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = collate_prompt_responses(rows[start: start + batch_size], pad)
        loss_sum, n = sft_loss(model, {k: v.to(device) for k, v in batch.items()})
        total += loss_sum.item()
        count += int(n)
    model.train(was_training)
    return total / max(count, 1)


# ---- the recipe -----------------------------------------------------------------------------------------


def run(cfg: Config) -> dict:
    from plmkit.alignment.records import (
        collate_prompt_responses,
        encode_prompt_responses,
        pack_prompt_responses,
        read_prompt_responses,
    )
    from plmkit.alignment.sft import sft_step
    from plmkit.data.batches import ShuffledBatches
    from plmkit.interop.hf import load
    from plmkit.io import write_json
    from plmkit.peft import apply_peft, trainable_report
    from plmkit.training import distributed, train

    require(cfg, "pretrained", "data.train_file")
    d = cfg.data
    info = distributed.init_distributed(cfg.device)
    pretrained = load(cfg.pretrained)
    tokenizer = pretrained.require_tokenizer()
    d = replace(d, max_length=fit_length(d.max_length, pretrained.model))
    template, render = chat_template(cfg.pretrained, d.chat_template, tokenizer)
    max_prompt = d.max_prompt_length or None

    def rows_of(path: str, n: int) -> list[dict]:
        records = limit(read_prompt_responses(path, template, **render), n)
        return encode_prompt_responses(tokenizer, records, d.max_length, max_prompt,
                                       special_tokens=template is None)

    train_rows = rows_of(d.train_file, d.max_train_examples)
    eval_rows = rows_of(d.eval_file, d.max_eval_examples) if d.eval_file else []
    if d.packing:
        train_rows = pack_prompt_responses(train_rows, d.max_length)
    model = pretrained.model
    if cfg.peft.method:
        model = apply_peft(model, cfg.peft)
    if info.is_main:
        print(trainable_report(model), flush=True)
    pad = pad_id(tokenizer)
    batches = ShuffledBatches(train_rows, lambda xs: collate_prompt_responses(xs, pad), d.batch_size,
                              seed=cfg.seed, rank=info.rank, world_size=info.world_size)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        if not eval_rows:
            return {}
        loss = response_loss(m, eval_rows, pad, d.eval_batch_size)
        return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0))}

    model.to(info.device)
    start = time.perf_counter()
    result = train(model, sft_step, batches, train_dir(cfg.out_dir, cfg.train), eval_fn=eval_fn,
                   tokenizer=tokenizer)
    summary: dict[str, Any] = {
        "steps": result.step,
        "first_loss": result.history[0]["loss"],
        "final_loss": result.history[-1]["loss"],
        "train_seconds": time.perf_counter() - start,
        "train_rows": len(train_rows),
        "eval_examples": len(eval_rows),
        **result.final_eval,
    }
    model = distributed.full_model(model)
    if cfg.out_dir and info.is_main:
        out = Path(cfg.out_dir)
        summary.update(save_policy(model, out, tokenizer, cfg.peft.method, cfg.pretrained))
        write_json(out / "sft_report.json", summary)
    distributed.barrier()
    return summary
