"""Train a tokenizer (byte-level BPE, WordPiece, Unigram or characters) on text or JSONL files.

    plmkit tokenizer train --files=corpus.txt --kind=bpe --vocab_size=8000 --out_dir=runs/tok

`bpe` is GPT-2's byte-level BPE, `wordpiece` BERT's, `unigram` T5's SentencePiece model, `char` one id per
character (nanoGPT's Shakespeare experiments). The output directory holds `tokenizer.json` and the
configs transformers' `AutoTokenizer` reads (a `char_tokenizer.json` for `char`). A vocabulary smaller
than `--vocab_size` (the text ran out of merges) is reported with the reason.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from plmkit.data.tokenizer import CharTokenizer, infer_roles, train_tokenizer
from plmkit.errors import ConfigError


@dataclass
class Config:
    files: list[str] = field(default_factory=list, metadata={"help": "text/JSONL files, comma-separated"})
    kind: Literal["bpe", "wordpiece", "unigram", "char"] = field(
        default="bpe", metadata={"help": "tokenizer model"}
    )
    vocab_size: int = field(default=8000, metadata={"help": "vocabulary size, special tokens included"})
    special_tokens: list[str] = field(
        default_factory=list,
        metadata={"help": "special tokens; default per kind: <|endoftext|> | [PAD],[UNK],[CLS],[SEP],[MASK] "
                          "| <pad>,</s>,<unk>"},
    )
    min_frequency: int = field(default=2, metadata={"help": "least count of a merged pair (bpe, wordpiece)"})
    lowercase: bool = field(default=False, metadata={"help": "lowercase the text before tokenizing"})
    text_field: str = field(default="text", metadata={"help": "JSONL field holding the text"})
    split: Literal["blank_line", "line", "file"] = field(
        default="blank_line", metadata={"help": "what one document is in a text file"}
    )
    out_dir: Path = field(default=Path("runs/tokenizer"), metadata={"help": "where to write the tokenizer"})
    overwrite: bool = field(default=False, metadata={"help": "replace a tokenizer already in out_dir"})


def run(cfg: Config) -> dict:
    if not cfg.files:
        raise ConfigError("--files is required: the text or JSONL files to train on")
    existing = [n for n in ("tokenizer.json", CharTokenizer.FILE) if (cfg.out_dir / n).exists()]
    if existing and not cfg.overwrite:
        raise ConfigError(f"{cfg.out_dir / existing[0]} already exists (set --overwrite to replace it)")
    if cfg.kind == "char":
        roles = infer_roles(cfg.special_tokens)
        tokenizer = CharTokenizer.from_files(cfg.files, special_tokens=roles, text_field=cfg.text_field)
    else:
        tokenizer = train_tokenizer(
            cfg.files, kind=cfg.kind, vocab_size=cfg.vocab_size, special_tokens=cfg.special_tokens or None,
            min_frequency=cfg.min_frequency, lowercase=cfg.lowercase, text_field=cfg.text_field,
            split=cfg.split,
        )
    tokenizer.save(cfg.out_dir)
    note = smaller_vocab_note(cfg, tokenizer.vocab_size)
    if note:
        print(f"note: {note}", file=sys.stderr)
    return {
        "out_dir": str(cfg.out_dir),
        "kind": cfg.kind,
        "vocab_size": tokenizer.vocab_size,
        "special_tokens": tokenizer.special_tokens,
        **({"note": note} if note else {}),
    }


def smaller_vocab_note(cfg: Config, got: int) -> str:
    """Why the trained vocabulary has fewer tokens than asked ('' when it does not)."""
    if cfg.kind == "char" or got >= cfg.vocab_size:
        return ""
    if cfg.kind == "unigram":
        why = "the text holds no more pieces worth keeping; more text gives more"
    else:
        why = (f"training stops when no pair of tokens occurs at least --min_frequency={cfg.min_frequency} "
               "times; more text (or a lower --min_frequency) gives more")
    return f"asked for {cfg.vocab_size} tokens, got {got}: {why}"
