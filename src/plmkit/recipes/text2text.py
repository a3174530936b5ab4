"""Encoder-decoder glue for the recipes: T5/BART builders, span-corruption and denoising steps for
`plmkit pretrain`, and the text-to-text task for `plmkit finetune --task=text2text`.

Reading and encoding records is `plmkit.data.text2text`; the held-out scores (greedy generation, exact
match, BLEU, ROUGE-L, per task) are `plmkit.evaluation.text2text`, which `plmkit eval` shares.

    plmkit pretrain --objective=span_corruption --model.family=t5 --data.train_files=a.txt ...
    plmkit pretrain --objective=denoising --model.family=bart --data.train_files=a.txt ...
    plmkit finetune --task=text2text --pretrained=runs/t5/hf --data.train_file=train.jsonl \\
        --data.eval_file=dev.jsonl --data.text_column=source --data.label_column=target

The text-to-text task reads JSONL/TSV with a source field (`--data.text_column`, default "source") and
a target field (`--data.label_column`; its default "label" reads the field "target"). Sources carry
their task prefix ("summarize: ..."). Evaluation generates greedily and reports exact match, BLEU and
ROUGE-L.

Several tasks in one run: `data.mixture` (`MixtureConfig`) lists the sources, each with its files,
format, field names, prefix and (classification) label words; training batches draw each example's task
at the mixing rates (examples-proportional with a cap, or temperature), and evaluation reports each
task's metrics as `<task>/<metric>`: accuracy of the label word mapped back for classification tasks,
BLEU, ROUGE-L and exact match for generation tasks. An evaluation source whose prefix is none of the
tasks' is a one-line error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.data.text2text import (
    FORMATS,
    MixtureBatches,
    TaskSpec,
    Text2TextExample,
    encode_examples,
    mixing_rates,
    read_examples,
    task_of,
)
from plmkit.errors import ConfigError, DataError
from plmkit.evaluation.text2text import mixture_of, task_spec
from plmkit.io import write_json
from plmkit.models.bart import BartConfig, bart_lm
from plmkit.models.layers import shift_right
from plmkit.models.t5 import T5Config, t5_lm
from plmkit.objectives.denoising import DenoisingConfig, denoising_batch
from plmkit.objectives.fused_ce import model_lm_loss
from plmkit.objectives.span_corruption import span_corruption_batch
from plmkit.training import StepOutput, step_generator

NUM_SENTINELS = 100  # T5's extra_ids: the top rows of the vocabulary


# ---- pretraining ------------------------------------------------------------------------------------


def build_t5(m: Any, vocab_size: int) -> nn.Module:
    """T5 v1.1-style (gated-GELU) from the pretrain recipe's model shape; 100 sentinel rows are added
    above the tokenizer's vocabulary, as T5 adds its extra_ids."""
    return t5_lm(
        T5Config(
            vocab_size=vocab_size + NUM_SENTINELS,
            d_model=m.d_model,
            d_kv=m.d_model // m.num_heads,
            d_ff=m.d_ff or 4 * m.d_model,
            num_layers=m.num_layers,
            num_heads=m.num_heads,
            dropout=m.dropout,
            feed_forward="gated-gelu",
            tie_embeddings=True,
            scale_decoder_outputs=True,
        )
    )


def build_bart(m: Any, vocab_size: int) -> nn.Module:
    """BART from the pretrain recipe's model shape; an extra top row is <mask> if the tokenizer has none."""
    return bart_lm(
        BartConfig(
            vocab_size=vocab_size + 1,
            max_positions=m.max_positions,
            d_model=m.d_model,
            num_layers=m.num_layers,
            num_heads=m.num_heads,
            d_ff=m.d_ff or 4 * m.d_model,
            dropout=m.dropout,
            pad_token_id=0,
            bos_token_id=0,
            eos_token_id=0,
            decoder_start_token_id=0,
        )
    )


def _seq2seq_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
    cfg = model.config
    dec = shift_right(batch["labels"], cfg.decoder_start_token_id, cfg.pad_token_id)
    # Fused head + loss (no (B, T, V) logits); the same sum as seq2seq_loss over the logits.
    loss_sum, n = model_lm_loss(model, batch["labels"], batch["input_ids"], batch.get("attention_mask"),
                                decoder_input_ids=dec)
    return StepOutput(loss_sum=loss_sum, num_targets=n)


Corruption = Callable[[nn.Module, dict[str, torch.Tensor], torch.Generator], dict[str, torch.Tensor]]


def span_corruption(tokenizer: Any) -> Corruption:
    """Packed windows -> T5 span-corrupted inputs and targets; sentinels are the model's top rows."""
    eos = getattr(tokenizer, "eos_id", None)

    def corrupt(model: nn.Module, batch: dict[str, torch.Tensor], g: torch.Generator) -> dict:
        return span_corruption_batch(batch["input_ids"], g, model.config.vocab_size - 1, eos)

    return corrupt


def denoising(tokenizer: Any) -> Corruption:
    """Packed windows -> BART text infilling (30%, Poisson(3) spans) plus sentence permutation at '.'."""
    dots = tuple(i for t in (".", "Ġ.", "▁.") if (i := _token_id(tokenizer, t)) is not None)
    mask_id = getattr(tokenizer, "mask_id", None)

    def corrupt(model: nn.Module, batch: dict[str, torch.Tensor], g: torch.Generator) -> dict:
        cfg = DenoisingConfig(
            mask_id=model.config.vocab_size - 1 if mask_id is None else mask_id, sentence_end_ids=dots
        )
        return denoising_batch(batch["input_ids"], cfg, g, model.config.pad_token_id)

    return corrupt


# Pretraining objective -> corruption; training draws fresh noise per batch, evaluation a fixed one.
CORRUPTIONS: dict[str, Callable[[Any], Corruption]] = {
    "span_corruption": span_corruption,
    "denoising": denoising,
}


def _corrupting_step(corrupt: Corruption) -> Callable[[nn.Module, dict[str, torch.Tensor]], StepOutput]:
    def step(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
        return _seq2seq_step(model, corrupt(model, batch, step_generator()))

    return step


def make_span_corruption(
    tokenizer: Any, seed: int
) -> Callable[[nn.Module, dict[str, torch.Tensor]], StepOutput]:
    """Span corruption on packed windows: a window of `span_corruption_lengths(S)[0]` tokens gives
    encoder inputs of exactly S tokens. Sentinels are the model's top vocabulary rows."""
    return _corrupting_step(span_corruption(tokenizer))


def make_denoising(tokenizer: Any, seed: int) -> Callable[[nn.Module, dict[str, torch.Tensor]], StepOutput]:
    """BART text infilling (30%, Poisson(3) spans) plus sentence permutation at '.' tokens."""
    return _corrupting_step(denoising(tokenizer))


def evaluate_seq2seq(
    model: nn.Module, batches: Any, num_batches: int, corrupt: Corruption, seed: int = 0
) -> dict[str, float]:
    """Mean target-token loss and perplexity of the seq2seq objective on `num_batches` held-out windows.

    The corruption noise comes from a generator seeded with `seed` afresh at every call, so each
    evaluation scores the same corrupted examples and successive validation losses compare.
    """
    g = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for _ in range(num_batches):
            batch = {k: v.to(device) for k, v in batches.next_batch().items()}
            out = _seq2seq_step(model, corrupt(model, batch, g))
            total += float(out.loss_sum)
            count += int(out.num_targets)
    loss = total / max(count, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}


def _token_id(tokenizer: Any, token: str) -> int | None:
    try:
        return tokenizer.token_to_id(token)
    except Exception:  # noqa: BLE001 - a tokenizer without the token
        return None


# ---- fine-tuning: the finetune recipe's Task row --------------------------------------------------


class TiedProjection(nn.Module):
    """hidden @ embeddingᵀ (+ bias): the LM output tied to the shared embedding.

    Not an `nn.Linear`, so the fine-tuning recipe's re-initialization of fresh heads leaves the
    pretrained embedding it shares alone.
    """

    def __init__(self, embedding: nn.Embedding, bias: bool):
        super().__init__()
        self.weight = embedding.weight
        self.bias = nn.Parameter(torch.zeros(embedding.num_embeddings)) if bias else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.weight, self.bias)


class Seq2SeqLMHead(nn.Module):
    """`LMHead`'s layout (`lm_head`) over a `TiedProjection`, so export and generation treat it alike."""

    def __init__(self, embedding: nn.Embedding, bias: bool):
        super().__init__()
        self.lm_head = TiedProjection(embedding, bias)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.lm_head(hidden)  # (B, T, V)


def text2text_head(backbone: nn.Module, num_labels: int, cfg: Any) -> nn.Module:
    if not hasattr(backbone, "decode"):
        raise ConfigError(
            f"--task=text2text needs an encoder-decoder (t5, bart), got {type(backbone).__name__}"
        )
    if getattr(backbone.config, "tie_embeddings", True) is False:
        raise ConfigError("--task=text2text needs a checkpoint whose LM head is tied to the embedding")
    return Seq2SeqLMHead(backbone.embed_tokens, bias=backbone.config.model_type == "bart")


# ---- several tasks in one run: the mixture config ----------------------------------------------------


@dataclass
class SourceConfig:
    """One task of a text-to-text mixture."""

    name: str = field(default="", metadata={"help": "task name; metrics are reported as <name>/<metric>"})
    train: str = field(default="", metadata={"help": "training file (JSONL, or TSV with a header row)"})
    eval: str = field(default="", metadata={"help": "evaluation file ('': the task is not evaluated)"})
    format: str = field(default="auto", metadata={"help": "jsonl, tsv or auto (by the file suffix)"})
    source_field: str = field(default="source", metadata={"help": "field holding the input text"})
    target_field: str = field(default="target", metadata={"help": "field holding the output text or label"})
    prefix: str = field(default="", metadata={"help": "task prefix put before every source"})
    label_words: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "classification: label -> word the model generates (empty: a generation task)"},
    )
    max_train_examples: int = field(default=0, metadata={"help": "use the first N training records (0: all)"})
    max_eval_examples: int = field(default=0, metadata={"help": "use the first N eval records (0: all)"})

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("every source needs a name")
        if not self.train:
            raise ValueError(f"source {self.name!r} needs a train file")
        if self.format not in FORMATS:
            known = ", ".join(FORMATS)
            raise ValueError(f"source {self.name!r}: format {self.format!r} is not one of {known}")
        if not self.prefix.strip():
            raise ValueError(f"source {self.name!r} needs a prefix: the model tells the tasks apart by it")

    def spec(self, path: str) -> TaskSpec:
        return TaskSpec(
            self.name, path, self.prefix, self.source_field, self.target_field, dict(self.label_words),
            self.format,
        )


@dataclass
class MixtureConfig:
    """Several text-to-text tasks trained together, each example's task drawn at its rate
    (Raffel et al. 2020, sec. 3.5.2): rate ∝ min(N, cap) ("proportional") or min(N, cap)^(1/temperature)."""

    sources: list[SourceConfig] = field(
        default_factory=list, metadata={"help": "the tasks (YAML list; empty: one file, data.train_file)"}
    )
    mixing: Literal["proportional", "temperature"] = field(
        default="proportional", metadata={"help": "proportional (to min(N, cap)) or temperature"}
    )
    cap: int = field(default=0, metadata={"help": "examples counted per task at most (0: no cap)"})
    temperature: float = field(default=1.0, metadata={"help": "mixing=temperature: rate ∝ min(N, cap)^(1/T)"})

    def __post_init__(self) -> None:
        names = [src.name for src in self.sources]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"source name {repeated[0]!r} is used twice")
        prefixes = [src.prefix for src in self.sources]
        shared = sorted({p for p in prefixes if prefixes.count(p) > 1})
        if shared:
            raise ValueError(f"prefix {shared[0]!r} is used by two sources")
        if self.cap < 0:
            raise ValueError(f"cap must be >= 0, got {self.cap}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.mixing == "proportional" and self.temperature != 1.0:
            raise ValueError("temperature is set but mixing is 'proportional': set mixing=temperature")

    def rates(self, sizes: Mapping[str, int]) -> dict[str, float]:
        t = self.temperature if self.mixing == "temperature" else 1.0
        return mixing_rates(sizes, cap=self.cap or None, temperature=t)

    def prefixes(self) -> dict[str, str]:
        return {src.name: src.prefix for src in self.sources}


def _limit(records: list, n: int) -> list:
    return records[:n] if n > 0 else records


def _read_source(src: SourceConfig, path: str, limit: int, what: str) -> list[Text2TextExample]:
    if not Path(path).is_file():
        raise DataError(f"data.mixture source {src.name!r}: {what} file {path} not found")
    return _limit(read_examples(src.spec(path)), limit)


def read_mixture(d: Any) -> tuple[list[Text2TextExample], list[Text2TextExample]] | None:
    """(train, eval) records of every source of `d.mixture`, each tagged with its task; None without one.

    Evaluation reads each source's `eval` file, or `d.eval_file` when set: one file of sources that
    already carry their prefixes, each assigned to the task its prefix names (an unknown prefix is an
    error naming the line)."""
    m = mixture_of(d)
    if m is None:
        return None
    train: list[Text2TextExample] = []
    evals: list[Text2TextExample] = []
    for src in m.sources:
        train += _read_source(src, src.train, src.max_train_examples, "train")
        if src.eval and not d.eval_file:
            evals += _read_source(src, src.eval, src.max_eval_examples, "eval")
    if d.eval_file:
        evals = assign_tasks(_limit(read_examples(task_spec(d, d.eval_file)), d.max_eval_examples), m)
    if not evals:
        raise ConfigError("no evaluation data: give the sources eval files or set --data.eval_file")
    return train, evals


def assign_tasks(records: Sequence[Text2TextExample], m: MixtureConfig) -> list[Text2TextExample]:
    """Tag each record with the task its source's prefix names; a classification target given as a
    label (not yet its word) becomes its label word."""
    by_name = {src.name: src for src in m.sources}
    prefixes = m.prefixes()
    out = []
    for i, r in enumerate(records):
        task = task_of(r.source, prefixes, where=r.where or f"eval example {i}")
        words = by_name[task].label_words
        target = words.get(r.target, r.target)
        out.append(Text2TextExample(r.source, target, task, r.where))
    return out


def mixture_batches(
    features: Sequence[dict], records: Sequence[Text2TextExample], d: Any, seed: int, collate_fn: Any
) -> Any:
    """The recipe's training batches: `MixtureBatches` at the configured rates (None without a mixture,
    so the recipe shuffles one file as usual)."""
    m = mixture_of(d)
    if m is None:
        return None
    groups: dict[str, list[dict]] = {src.name: [] for src in m.sources}
    for f, r in zip(features, records):
        groups[r.task].append(f)
    rates = m.rates({name: len(xs) for name, xs in groups.items()})
    print("mixing rates: " + ", ".join(f"{n} {r:.3f}" for n, r in rates.items()), flush=True)
    return MixtureBatches(groups, rates, collate_fn, d.batch_size, seed)


# ---- fine-tuning: the finetune recipe's Task row --------------------------------------------------


def no_label_set(records: Sequence[Any]) -> list[str]:
    return []


def encode_text2text(
    tokenizer: Any, records: Sequence[Text2TextExample], labels: Sequence[str], d: Any
) -> list[dict]:
    """Source and target packed in one row so the recipe's shared collate pads them together:
    input_ids = source + target, labels = -100 over the source, start_positions = source length.
    `unpack` splits them again."""
    out = []
    for f in encode_examples(
        tokenizer, records, d.max_length, d.max_length, where=d.train_file or "examples"
    ):
        n = len(f["input_ids"])
        out.append(
            {
                "input_ids": f["input_ids"] + f["labels"],
                "labels": [-100] * n + f["labels"],
                "start_positions": n,
            }
        )
    return out


def unpack(batch: dict[str, torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """Packed rows (see `encode_text2text`) -> right-padded sources with mask (B, S) and labels (B, T)."""
    lengths = batch["start_positions"].tolist()
    totals = batch["attention_mask"].sum(-1).tolist()
    s, t = max(lengths), max(total - n for n, total in zip(lengths, totals))
    b = len(lengths)
    ids = torch.full((b, s), pad_id, dtype=torch.long)
    mask = torch.zeros(b, s, dtype=torch.long)
    labels = torch.full((b, t), -100, dtype=torch.long)
    for i, (n, total) in enumerate(zip(lengths, totals)):
        ids[i, :n], mask[i, :n] = batch["input_ids"][i, :n], 1
        labels[i, : total - n] = batch["labels"][i, n:total]
    device = batch["input_ids"].device
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def text2text_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
    return _seq2seq_step(model, unpack(batch, model.config.pad_token_id))


def write_task_table(model_dir: Path, d: Any) -> None:
    """Record the mixture's tasks (prefix, label words) beside the model, for inputs given to it later."""
    m = mixture_of(d)
    if m is not None:
        tasks = {src.name: {"prefix": src.prefix, "label_words": src.label_words} for src in m.sources}
        write_json(Path(model_dir) / "text2text_tasks.json", tasks)
