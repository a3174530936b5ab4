"""Tokenize text or JSONL files into a token store (memory-mapped shards) for pretraining.

    plmkit data prepare --inputs=train.txt --tokenizer=runs/tok --out_dir=data/train --num_proc=4

Every document is followed by the tokenizer's EOS id. The store (shards, manifest.json and a copy of the
tokenizer) is what `plmkit pretrain` reads through `PackedBatches`: prepare `DIR/train` (and `DIR/val`),
then `plmkit pretrain --data.store_dir=DIR` trains on them without naming the text files again. Run again
on the same inputs (paths, sizes, sha256, tokenizer) it keeps the store; on other inputs it refuses
unless `--overwrite`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from plmkit.data.store import MANIFEST, TokenStore, build_store
from plmkit.data.tokenizer import load_tokenizer
from plmkit.errors import ConfigError, DataError


@dataclass
class Config:
    inputs: list[str] = field(default_factory=list, metadata={"help": "text/JSONL files, comma-separated"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer directory or file (tokenizer.json, ...)"})
    out_dir: Path = field(default=Path("data/store"), metadata={"help": "directory of the token store"})
    text_field: str = field(default="text", metadata={"help": "JSONL field holding the text"})
    split: Literal["blank_line", "line", "file"] = field(
        default="blank_line", metadata={"help": "what one document is in a text file"}
    )
    shard_tokens: int = field(default=2**28, metadata={"help": "tokens per shard file"})
    num_proc: int = field(default=1, metadata={"help": "tokenizer processes"})
    add_special_tokens: bool = field(
        default=False, metadata={"help": "let the tokenizer add its template tokens ([CLS]/[SEP], </s>)"}
    )
    overwrite: bool = field(default=False, metadata={"help": "replace an existing store at out_dir"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


def run(cfg: Config) -> dict:
    if not cfg.inputs:
        raise ConfigError("--inputs is required: the text or JSONL files to tokenize")
    if not cfg.tokenizer:
        raise ConfigError("--tokenizer is required: a tokenizer directory (see `plmkit tokenizer train`)")
    if cfg.num_proc > 1:
        # Worker processes are forked; the Rust tokenizer's own thread pool would otherwise warn and shut
        # itself off in each of them after the fork.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tokenizer = load_tokenizer(cfg.tokenizer)
    reused = False
    if (Path(cfg.out_dir) / MANIFEST).is_file() and not cfg.overwrite:
        existing = TokenStore(cfg.out_dir)
        reason = existing.stale_reason(
            cfg.inputs, tokenizer, cfg.text_field, cfg.split, cfg.add_special_tokens
        )
        if reason is not None:
            raise DataError(f"token store {cfg.out_dir} holds other data: {reason}; --overwrite replaces it")
        path, reused = Path(cfg.out_dir), True
    else:
        path = build_store(
            cfg.inputs, tokenizer, cfg.out_dir, text_field=cfg.text_field, split=cfg.split,
            shard_tokens=cfg.shard_tokens, num_proc=cfg.num_proc, add_special_tokens=cfg.add_special_tokens,
            overwrite=cfg.overwrite, progress=cfg.progress,
        )
    store = TokenStore(path)
    return {
        "reused": reused,
        "out_dir": str(path),
        "num_tokens": store.num_tokens,
        "num_documents": store.manifest["num_documents"],
        "dtype": store.dtype.name,
        "shards": len(store.manifest["shards"]),
    }
