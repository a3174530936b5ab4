"""Text-to-text tasks (Raffel et al. 2020, sec. 2.4): every task is text in, text out.

A task prefix tells one model which task a source is ("translate English to German: ...",
"summarize: ...", "sst2 sentence: ..."); classification generates a label *word* that maps back to the
label. Several tasks train in one run, each drawn with its own rate (sec. 3.5.2):
- examples-proportional mixing with a cap K: rate_m ∝ min(N_m, K), so a huge task cannot crowd out
  the others;
- temperature mixing: rate_m ∝ min(N_m, K)^(1/T); T = 1 is proportional, large T approaches uniform.

Sources are JSONL (one object per line) or TSV with a header row, with named source and target fields.
Bad input gives one-line `DataError`s that name the file and line. `MixtureBatches` serves training
batches whose examples are drawn task by task at the mixing rates.
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
from torch import Tensor

from plmkit.errors import ConfigError, DataError

IGNORE_INDEX = -100
OVERFLOW = ("truncate", "error")


@dataclass
class Text2TextExample:
    source: str  # with its task prefix
    target: str
    task: str = ""
    where: str = field(default="", compare=False)  # "file:line", for error messages


@dataclass
class TaskSpec:
    """One task of a mixture: where its data is and how to turn a record into (source, target)."""

    name: str
    path: str
    prefix: str = ""  # e.g. "translate English to German: "
    source_field: str = "source"
    target_field: str = "target"
    label_words: dict[str, str] = field(default_factory=dict)  # classification: label -> word to generate
    format: str = "auto"  # "jsonl", "tsv", or "auto" (by suffix: .tsv/.tab are TSV, the rest JSONL)


FORMATS = ("auto", "jsonl", "tsv")


def read_examples(spec: TaskSpec, limit: int = 0) -> list[Text2TextExample]:
    """Read a JSONL or TSV (header row) file into examples with the task's prefix."""
    path = Path(spec.path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if spec.format not in FORMATS:
        raise ConfigError(f"{path}: format {spec.format!r} is not one of {', '.join(FORMATS)}")
    is_tsv = spec.format == "tsv" or (spec.format == "auto" and path.suffix in (".tsv", ".tab"))
    out: list[Text2TextExample] = []
    for line_no, row in _rows(path, is_tsv):
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
        out.append(Text2TextExample(spec.prefix + source, target, spec.name, f"{path}:{line_no}"))
        if limit and len(out) >= limit:
            break
    if not out:
        raise DataError(f"{path}: no examples")
    return out


def _rows(path: Path, is_tsv: bool) -> Any:
    if is_tsv:
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


class MixtureBatches:
    """Endless training batches from several tasks: each example's task is drawn at the mixing rates,
    then the task's next example in its own shuffled order (reshuffled each time the task is used up).

    Batch `i` draws its tasks from a generator seeded with (seed, i); task `t` visits its examples in
    `torch.randperm` seeded with (seed, t, epoch). The batch index and the number of examples taken from
    each task are the whole state, so a resumed run sees the same batches (the `Batches` protocol).
    """

    def __init__(
        self,
        examples: Mapping[str, Sequence[Any]],
        rates: Mapping[str, float],
        collate_fn: Any,
        batch_size: int,
        seed: int,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        empty = [name for name, xs in examples.items() if not xs]
        if empty:
            raise DataError(f"task {empty[0]!r} of the mixture has no training examples")
        if set(rates) != set(examples):
            raise ConfigError(f"mixing rates for {sorted(rates)} but tasks {sorted(examples)}")
        self.examples = {name: list(xs) for name, xs in examples.items()}
        self.names = list(self.examples)
        self.rates = torch.tensor([float(rates[n]) for n in self.names], dtype=torch.double)
        self.collate_fn = collate_fn
        self.batch_size = batch_size
        self.seed = seed
        self.index = 0
        self.taken = dict.fromkeys(self.names, 0)
        self._orders: dict[str, tuple[int, list[int]]] = {}

    def _order(self, task: int, epoch: int) -> list[int]:
        name = self.names[task]
        cached = self._orders.get(name)
        if cached is None or cached[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + task * 10_007 + epoch)
            cached = (epoch, torch.randperm(len(self.examples[name]), generator=g).tolist())
            self._orders[name] = cached
        return cached[1]

    def draw_tasks(self, index: int) -> list[str]:
        """The task of each example of batch `index`."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7_919 * (index + 1))
        picks = torch.multinomial(self.rates, self.batch_size, replacement=True, generator=g)
        return [self.names[i] for i in picks.tolist()]

    def next_batch(self) -> dict[str, Tensor]:
        chosen = []
        for name in self.draw_tasks(self.index):
            task = self.names.index(name)
            n = len(self.examples[name])
            epoch, pos = divmod(self.taken[name], n)
            chosen.append(self.examples[name][self._order(task, epoch)[pos]])
            self.taken[name] += 1
        self.index += 1
        return self.collate_fn(chosen)

    def state_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "taken": dict(self.taken),
            "seed": self.seed,
            "sizes": {n: len(xs) for n, xs in self.examples.items()},
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {
            "seed": self.seed,
            "sizes": {n: len(xs) for n, xs in self.examples.items()},
            "batch_size": self.batch_size,
        }
        for key, value in expected.items():
            if state.get(key) != value:
                raise DataError(
                    f"sampler state key {key!r} is {state.get(key)!r} but this run has {value!r}; "
                    "resume with the same tasks, data, seed and batch size"
                )
        self.index = int(state["index"])
        self.taken = {n: int(state["taken"][n]) for n in self.names}


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
    cut: dict[str, list[tuple[int, int]]] = {"source": [], "target": []}  # (example, its tokens)
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
                cut[what].append((i, len(ids)))
                ids = ids[:room]
            pair.append(ids + tail)
        out.append({"input_ids": pair[0], "labels": pair[1]})
    for what, limit in (("source", max_source_length), ("target", max_target_length)):
        if cut[what]:
            first, n = cut[what][0]
            warnings.warn(
                f"{where}: {len(cut[what])} of {len(examples)} {what}s were longer than {limit - len(tail)} "
                f"tokens and were cut to that (the first is example {first}, {n} tokens)",
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
