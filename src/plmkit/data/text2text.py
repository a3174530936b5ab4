"""Text-to-text tasks (Raffel et al. 2020, sec. 2.4): every task is text in, text out.

A task prefix tells one model which task a source is ("translate English to German: ...",
"summarize: ...", "sst2 sentence: ..."); classification generates a label *word* that maps back to the
label. Several tasks train in one run, each drawn with its own rate (sec. 3.5.2):
- examples-proportional mixing with a cap K: rate_m ∝ min(N_m, K), so a huge task cannot crowd out
  the others;
- temperature mixing: rate_m ∝ min(N_m, K)^(1/T); T = 1 is proportional, large T approaches uniform.

Sources are JSONL (one object per line) or TSV with a header row, with named source and target fields.
Bad input gives one-line `DataError`s that name the file and line.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from plmkit.errors import ConfigError, DataError

IGNORE_INDEX = -100
OVERFLOW = ("truncate", "error")


@dataclass
class Text2TextExample:
    source: str  # with its task prefix
    target: str
    task: str = ""


@dataclass
class TaskSpec:
    """One task of a mixture: where its data is and how to turn a record into (source, target)."""

    name: str
    path: str
    prefix: str = ""  # e.g. "translate English to German: "
    source_field: str = "source"
    target_field: str = "target"
    label_words: dict[str, str] = field(default_factory=dict)  # classification: label -> word to generate


def read_examples(spec: TaskSpec, limit: int = 0) -> list[Text2TextExample]:
    """Read a JSONL or TSV (header row) file into examples with the task's prefix."""
    path = Path(spec.path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    out: list[Text2TextExample] = []
    for line_no, row in _rows(path):
        values = []
        for key in (spec.source_field, spec.target_field):
            if key not in row or row[key] is None:
                raise DataError(f"{path}:{line_no}: missing field {key!r}")
            values.append(str(row[key]))
        source, target = values
        if spec.label_words:
            if target not in spec.label_words:
                known = ", ".join(sorted(spec.label_words))
                raise DataError(f"{path}:{line_no}: label {target!r} is not one of {known}")
            target = spec.label_words[target]
        out.append(Text2TextExample(spec.prefix + source, target, spec.name))
        if limit and len(out) >= limit:
            break
    if not out:
        raise DataError(f"{path}: no examples")
    return out


def _rows(path: Path) -> Any:
    if path.suffix in (".tsv", ".tab"):
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            for i, row in enumerate(reader, start=2):
                yield i, row
        return
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{i}: expected a JSON object, got {type(row).__name__}")
            yield i, row


def mixing_rates(
    sizes: Mapping[str, int], cap: int | None = None, temperature: float = 1.0
) -> dict[str, float]:
    """Sampling rate per task: ∝ min(N, cap)^(1/temperature) (examples-proportional when temperature=1)."""
    if temperature <= 0:
        raise ConfigError(f"mixing temperature must be > 0, got {temperature}")
    if cap is not None and cap <= 0:
        raise ConfigError(f"mixing cap must be > 0, got {cap}")
    weights = {k: float(min(n, cap) if cap else n) ** (1.0 / temperature) for k, n in sizes.items()}
    total = sum(weights.values())
    if total <= 0:
        raise DataError("every task of the mixture is empty")
    return {k: w / total for k, w in weights.items()}


def mix(
    examples: Mapping[str, Sequence[Text2TextExample]],
    rates: Mapping[str, float],
    num_examples: int,
    generator: torch.Generator,
) -> list[Text2TextExample]:
    """Draw `num_examples` examples: a task by its rate, then one of its examples (cycling, shuffled)."""
    names = list(examples)
    probs = torch.tensor([rates[n] for n in names], dtype=torch.float)
    choices = torch.multinomial(probs, num_examples, replacement=True, generator=generator).tolist()
    orders = {n: torch.randperm(len(examples[n]), generator=generator).tolist() for n in names}
    cursors = dict.fromkeys(names, 0)
    out = []
    for c in choices:
        name = names[c]
        order = orders[name]
        out.append(examples[name][order[cursors[name] % len(order)]])
        cursors[name] += 1
    return out


def encode_examples(
    tokenizer: Any,
    examples: Sequence[Text2TextExample],
    max_source_length: int,
    max_target_length: int,
    overflow: str = "truncate",
    where: str = "examples",
) -> list[dict[str, list[int]]]:
    """Tokenize (source, target) pairs -> {"input_ids", "labels"}; both end with the tokenizer's EOS.

    Too long a source or target is cut, with one warning per call that counts the cuts and names the
    first (`overflow="truncate"`), or is an error naming the example (`overflow="error"`); the EOS is
    kept either way.
    """
    if overflow not in OVERFLOW:
        raise ConfigError(f"overflow {overflow!r} is not one of {', '.join(OVERFLOW)}")
    eos = getattr(tokenizer, "eos_id", None)
    tail = [] if eos is None else [eos]
    cut: dict[str, list[str]] = {"source": [], "target": []}
    out = []
    for i, ex in enumerate(examples):
        pair = []
        for what, text, limit in (
            ("source", ex.source, max_source_length),
            ("target", ex.target, max_target_length),
        ):
            ids = tokenizer.encode(text, add_special_tokens=False)
            room = limit - len(tail)
            if len(ids) > room:
                if overflow == "error":
                    raise DataError(
                        f"{where}[{i}]: {what} has {len(ids)} tokens, more than the allowed {room}"
                    )
                if not cut[what]:
                    cut[what].append(f"first {where}[{i}] from {len(ids)}")
                cut[what].append("")
                ids = ids[:room]
            pair.append(ids + tail)
        out.append({"input_ids": pair[0], "labels": pair[1]})
    for what, limit in (("source", max_source_length), ("target", max_target_length)):
        if cut[what]:
            warnings.warn(
                f"{where}: {len(cut[what]) - 1} {what}s truncated to {limit - len(tail)} tokens "
                f"({cut[what][0]})",
                stacklevel=2,
            )
    return out


def collate_text2text(
    features: Sequence[Mapping[str, Sequence[int]]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad sources (pad_id, with attention_mask) and labels (-100) separately: (B, S), (B, T)."""
    if not features:
        raise DataError("cannot collate an empty batch")
    s = max(len(f["input_ids"]) for f in features)
    t = max(len(f["labels"]) for f in features)
    ids = torch.full((len(features), s), pad_id, dtype=torch.long)
    mask = torch.zeros(len(features), s, dtype=torch.long)
    labels = torch.full((len(features), t), IGNORE_INDEX, dtype=torch.long)
    for i, f in enumerate(features):
        ids[i, : len(f["input_ids"])] = torch.tensor(list(f["input_ids"]), dtype=torch.long)
        mask[i, : len(f["input_ids"])] = 1
        labels[i, : len(f["labels"])] = torch.tensor(list(f["labels"]), dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def label_from_word(generated: str, label_words: Mapping[str, str]) -> str | None:
    """Map a generated label word back to its label (None when the model generated something else)."""
    word = generated.strip().lower()
    for label, w in label_words.items():
        if w.strip().lower() == word:
            return label
    return None


def task_of(source: str, prefixes: Mapping[str, str], where: str = "source") -> str:
    """The task whose prefix starts `source`; an unknown prefix is a one-line error."""
    for name, prefix in sorted(prefixes.items(), key=lambda kv: -len(kv[1])):
        if prefix and source.startswith(prefix):
            return name
    head = source.split(":", 1)[0] if ":" in source else source[:30]
    known = ", ".join(repr(p.strip()) for p in prefixes.values())
    raise DataError(f"{where}: unknown task prefix {head!r} (known: {known})")
