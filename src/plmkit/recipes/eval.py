"""Evaluate a causal LM checkpoint: perplexity of a text file.

The file is tokenized as one stream and cut into windows of `--seq_len` + 1 tokens (the last partial
window included); perplexity is exp of the mean next-token loss over every predicted token.

    plmkit eval --model=runs/gpt/hf --perplexity=data/val.txt --seq_len=256
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from plmkit.errors import ConfigError, DataError


@dataclass
class Config:
    model: str = field(default="", metadata={"help": "checkpoint directory (plmkit or Hugging Face)"})
    perplexity: str = field(default="", metadata={"help": "text file to measure perplexity on"})
    seq_len: int = field(default=0, metadata={"help": "tokens per window (0: the model's context)"})
    batch_size: int = field(default=8, metadata={"help": "windows per forward pass"})
    allow_pickle: bool = field(default=False, metadata={"help": "allow a pickle .bin checkpoint (runs code)"})


@torch.inference_mode()
def perplexity(model: torch.nn.Module, ids: list[int], seq_len: int, batch_size: int) -> dict[str, float]:
    """exp(mean next-token loss) over `ids`, in windows of seq_len + 1 tokens sharing one boundary."""
    from plmkit.objectives.clm import causal_lm_loss

    stream = torch.tensor(ids, dtype=torch.long)
    starts = list(range(0, max(len(ids) - 1, 0), seq_len))
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        windows = [stream[s:s + seq_len + 1] for s in starts[i:i + batch_size]]
        width = max(len(w) for w in windows) - 1
        inputs = torch.zeros(len(windows), width, dtype=torch.long)
        labels = torch.full((len(windows), width), -100, dtype=torch.long)
        mask = torch.zeros(len(windows), width, dtype=torch.long)
        for row, w in enumerate(windows):
            inputs[row, : len(w) - 1] = w[:-1]
            labels[row, : len(w) - 1] = w[1:]
            mask[row, : len(w) - 1] = 1
        loss_sum, n = causal_lm_loss(model(inputs, mask), labels)
        total += float(loss_sum)
        count += int(n)
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count}


def run(cfg: Config) -> dict:
    from plmkit.interop.hf import load

    if not cfg.model or not cfg.perplexity:
        raise ConfigError("eval needs --model=DIR and --perplexity=FILE")
    file = Path(cfg.perplexity)
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    loaded = load(cfg.model, allow_pickle=cfg.allow_pickle)
    tokenizer = loaded.require_tokenizer()
    ids = tokenizer.encode(file.read_text(encoding="utf-8"), add_special_tokens=False)
    if len(ids) < 2:
        raise DataError(f"{file}: fewer than 2 tokens, nothing to predict")
    context = getattr(loaded.model.config, "max_positions", 1024)
    seq_len = cfg.seq_len or context
    if seq_len > context:
        raise ConfigError(f"seq_len={seq_len} exceeds the model's context window of {context}")
    result = perplexity(loaded.model.eval(), ids, seq_len, cfg.batch_size)
    result["file"] = str(file)
    return result
