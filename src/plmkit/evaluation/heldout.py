"""Held-out scores and predictions of fine-tuned task models: the evaluation `plmkit finetune` reports,
for any saved checkpoint and any file, and the per-example predictions `plmkit predict` writes.

Every function takes the data options as `d` (any object with the fields of finetune's DataConfig that
it reads: text_column, pair_column, label_column, max_length, stride, max_answer_length,
eval_batch_size), so `plmkit finetune` and `plmkit eval` run literally the same code on a file.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from plmkit.data.readers import read_conll, read_glue_tsv, read_records, read_squad
from plmkit.data.records import LabeledText, QAExample, TaggedTokens
from plmkit.data.tasks import (
    QAFeature,
    best_spans,
    collate,
    encode_classification,
    encode_qa,
    encode_tagging,
    word_predictions,
)
from plmkit.errors import ConfigError
from plmkit.evaluation import text2text as t2t
from plmkit.metrics import accuracy, entity_scores, f1_binary, f1_macro, get_entities, squad_scores
from plmkit.models.heads import SequenceClassificationHead, SpanHead, TokenClassificationHead

# ---- model inputs ---------------------------------------------------------------------------------------


def _accepts_token_types(model: nn.Module) -> bool:
    backbone = getattr(model, "backbone", model)
    return "token_type_ids" in inspect.signature(backbone.forward).parameters


def forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
    """Run a TaskModel on a collated batch, giving token types to backbones that take them."""
    inner = getattr(model, "module", model)  # DDP / compile wrappers
    extra = {}
    if "token_type_ids" in batch and _accepts_token_types(getattr(inner, "_orig_mod", inner)):
        extra["token_type_ids"] = batch["token_type_ids"]
    return model(batch["input_ids"], batch["attention_mask"], **extra)


# ---- reading ----------------------------------------------------------------------------------------------


def read_classification(d: Any, path: str, labels: Sequence[str] | None) -> list[LabeledText]:
    if path.endswith((".tsv", ".tsv.gz")):
        return read_glue_tsv(
            path, d.text_column or "sentence", d.label_column, d.pair_column or None, labels=labels
        )
    columns = {"text": d.text_column or "text", "label": d.label_column}
    if d.pair_column:
        columns["text_pair"] = d.pair_column
    return read_records(path, LabeledText, columns, labels=labels)


def read_tagging(d: Any, path: str, labels: Sequence[str] | None) -> list[TaggedTokens]:
    return read_conll(path, labels=labels)


def read_qa(d: Any, path: str, labels: Sequence[str] | None) -> list[QAExample]:
    return read_squad(path)


# ---- evaluation -----------------------------------------------------------------------------------------


@torch.no_grad()
def _outputs(model: nn.Module, features: Sequence[dict], pad_id: int, batch_size: int) -> list[Any]:
    """`(batch, output)` of every evaluation batch in order, on the CPU. Under torchrun rank r runs
    batches r, r + W, ... and the outputs are gathered, so every rank returns the whole list."""
    import torch.distributed as dist  # directly: evaluation sits below training in the import order

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    grouped = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if grouped else (0, 1)
    starts = list(range(0, len(features), batch_size))
    mine = starts[rank::world_size]
    rounds = -(-len(starts) // world_size)
    local = []
    for r in range(rounds):
        # FSDP2 gathers weights inside every forward, so a rank with no batch left runs a spare one
        i = mine[r] if r < len(mine) else starts[-1]
        batch = collate(features[i : i + batch_size], pad_id)
        out = forward(model, {k: v.to(device) for k, v in batch.items()})
        if r < len(mine):
            local.append((i, batch, _to_cpu(out)))
    model.train(was_training)
    if world_size > 1:
        shards: list[Any] = [None] * world_size
        dist.all_gather_object(shards, local)
        local = sorted(part for shard in shards for part in shard)
    return [(batch, out) for _, batch, out in local]


def _to_cpu(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float().cpu()
    if dataclasses.is_dataclass(out):
        return replace(out, **{f.name: _to_cpu(getattr(out, f.name)) for f in dataclasses.fields(out)})
    return out


def _classification_logits(
    model: nn.Module, tokenizer: Any, records: Sequence[LabeledText], labels: Sequence[str], d: Any
) -> tuple[torch.Tensor, list[int]]:
    features = encode_classification(tokenizer, records, labels, d.max_length)
    logits = [out for _, out in _outputs(model, features, tokenizer.pad_id or 0, d.eval_batch_size)]
    return torch.cat(logits), [f["labels"] for f in features]


def evaluate_classification(
    model: nn.Module, tokenizer: Any, records: Sequence[LabeledText], labels: Sequence[str], d: Any
) -> dict[str, float]:
    logits, gold = _classification_logits(model, tokenizer, records, labels, d)
    predictions = logits.argmax(-1).tolist()
    scores = {"accuracy": accuracy(predictions, gold)}
    if len(labels) == 2:
        scores["f1"] = f1_binary(predictions, gold, positive=1)
    else:
        scores["f1_macro"] = f1_macro(predictions, gold, labels=list(range(len(labels))))
    return scores


def _tagging_predictions(
    model: nn.Module, tokenizer: Any, records: Sequence[TaggedTokens], labels: Sequence[str], d: Any
) -> list[list[str]]:
    features = encode_tagging(tokenizer, records, labels, d.max_length)
    predicted_tags: list[list[str]] = []
    k = 0
    for _, logits in _outputs(model, features, tokenizer.pad_id or 0, d.eval_batch_size):
        for row in logits.argmax(-1).tolist():
            ids = word_predictions(row, features[k]["word_ids"], len(records[k].tokens))
            predicted_tags.append([labels[i] for i in ids])
            k += 1
    return predicted_tags


def evaluate_tagging(
    model: nn.Module, tokenizer: Any, records: Sequence[TaggedTokens], labels: Sequence[str], d: Any
) -> dict[str, float]:
    predicted_tags = _tagging_predictions(model, tokenizer, records, labels, d)
    scores = entity_scores(predicted_tags, [r.tags for r in records])
    out = {"precision": scores["precision"], "recall": scores["recall"], "f1": scores["f1"]}
    for type_, row in scores["per_type"].items():
        out[f"f1_{type_}"] = row["f1"]
    return out


def _qa_answers(
    model: nn.Module, tokenizer: Any, records: Sequence[QAExample], d: Any
) -> dict[str, str]:
    features: list[QAFeature] = encode_qa(tokenizer, records, d.max_length, d.stride)
    starts: list[torch.Tensor] = []
    ends: list[torch.Tensor] = []
    for _, out in _outputs(model, [f.as_dict() for f in features], tokenizer.pad_id or 0, d.eval_batch_size):
        starts += list(out.start_logits)
        ends += list(out.end_logits)
    return best_spans(features, starts, ends, records, d.max_answer_length)


def evaluate_qa(
    model: nn.Module, tokenizer: Any, records: Sequence[QAExample], labels: Sequence[str], d: Any
) -> dict[str, float]:
    predictions = _qa_answers(model, tokenizer, records, d)
    return squad_scores(predictions, {r.id: [a.text for a in r.answers] for r in records})


# ---- predictions (one JSON-ready dict per record) -------------------------------------------------------


def predict_classification(
    model: nn.Module, tokenizer: Any, records: Sequence[LabeledText], labels: Sequence[str], d: Any
) -> list[dict[str, Any]]:
    logits, _ = _classification_logits(model, tokenizer, records, labels, d)
    probs = logits.float().softmax(-1).tolist()
    out = []
    for r, p in zip(records, probs):
        best = max(range(len(p)), key=p.__getitem__)
        row: dict[str, Any] = {"text": r.text}
        if r.text_pair is not None:
            row["text_pair"] = r.text_pair
        row.update(label=labels[best], probabilities=dict(zip(labels, p)), gold=r.label)
        out.append(row)
    return out


def predict_tagging(
    model: nn.Module, tokenizer: Any, records: Sequence[TaggedTokens], labels: Sequence[str], d: Any
) -> list[dict[str, Any]]:
    out = []
    for r, tags in zip(records, _tagging_predictions(model, tokenizer, records, labels, d)):
        # Spans are word indices, end exclusive, so tokens[start:end] is the entity.
        entities = [
            {"type": type_, "start": first, "end": last + 1, "text": " ".join(r.tokens[first : last + 1])}
            for type_, first, last in get_entities(tags)
        ]
        out.append({"tokens": r.tokens, "tags": tags, "entities": entities})
    return out


def predict_qa(
    model: nn.Module, tokenizer: Any, records: Sequence[QAExample], labels: Sequence[str], d: Any
) -> list[dict[str, Any]]:
    answers = _qa_answers(model, tokenizer, records, d)
    out = []
    for r in records:
        text = answers[r.id]
        # best_spans returns the context's characters, so the first occurrence is the span's start
        # unless the same text occurs earlier in the context.
        start = r.context.find(text) if text else -1
        out.append({"id": r.id, "question": r.question, "answer": text, "start": start,
                    "end": start + len(text) if start >= 0 else -1,
                    "gold": [a.text for a in r.answers]})
    return out


def predict_text2text(
    model: nn.Module, tokenizer: Any, records: Sequence[Any], labels: Sequence[str], d: Any
) -> list[dict[str, Any]]:
    hyps = t2t.generate_for_tasks(model, tokenizer, [r.source for r in records], d)
    return [{"source": r.source, "generated": h, "target": r.target} for r, h in zip(records, hyps)]


# ---- the table ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOutTask:
    """How `plmkit eval` / `plmkit predict` read, score and predict one task's file."""

    read: Callable[[Any, str, Sequence[str] | None], list]
    evaluate: Callable[[nn.Module, Any, Sequence[Any], Sequence[str], Any], dict[str, float]]
    predict: Callable[[nn.Module, Any, Sequence[Any], Sequence[str], Any], list[dict[str, Any]]]
    needs_labels: bool
    max_length: int = 128  # when --data.max_length is 0; QA: run_qa.py's 384-token windows


HELD_OUT_TASKS: dict[str, HeldOutTask] = {
    "classification": HeldOutTask(read_classification, evaluate_classification, predict_classification, True),
    "ner": HeldOutTask(read_tagging, evaluate_tagging, predict_tagging, True),
    "qa": HeldOutTask(read_qa, evaluate_qa, predict_qa, False, max_length=384),
    "text2text": HeldOutTask(t2t.read_text2text, t2t.evaluate_text2text, predict_text2text, False),
}


def resolve_lengths(d: Any, default_length: int, model: nn.Module) -> Any:
    """A data config's lengths left at 0 take the task's default, capped at the model's positions (as
    run_qa.py caps at the tokenizer's), and a stride of a third of the window, so the defaults always fit
    together; `d` is any dataclass with `max_length` and `stride` (finetune's, eval's)."""
    max_length = d.max_length
    if max_length == 0:
        max_length = default_length
        positions = getattr(model.config, "max_positions", None)
        if positions:
            max_length = min(max_length, positions)
    return replace(d, max_length=max_length, stride=d.stride or max_length // 3)


# ---- a whole file, for `plmkit eval --task` / `plmkit predict --task` ------------------------------------


@dataclass
class HeldOutData:
    """Which file to score and how to read it: the evaluation half of finetune's --data options."""

    eval_file: str = field(
        default="", metadata={"help": "file to score (TSV/JSONL/CSV, CoNLL or SQuAD JSON)"}
    )
    text_column: str = field(default="", metadata={"help": "text column ('': sentence for TSV, else text)"})
    pair_column: str = field(default="", metadata={"help": "second-segment column for pair tasks ('': none)"})
    label_column: str = field(default="label", metadata={"help": "label column of TSV/JSONL/CSV files"})
    labels: list[str] = field(
        default_factory=list, metadata={"help": "label set in id order ('': the checkpoint's id2label)"}
    )
    max_eval_examples: int = field(default=0, metadata={"help": "use the first N records (0: all)"})
    max_length: int = field(
        default=0, metadata={"help": "tokens per sequence, QA: per window (0: qa 384, others 128)"}
    )
    stride: int = field(
        default=0, metadata={"help": "QA: context tokens shared by consecutive windows (0: max_length // 3)"}
    )
    max_answer_length: int = field(default=30, metadata={"help": "QA: longest answer span in tokens"})
    eval_batch_size: int = field(default=64, metadata={"help": "examples per batch"})


_HEADS = {
    "classification": SequenceClassificationHead,
    "ner": TokenClassificationHead,
    "qa": SpanHead,
}


def checkpoint_labels(hf_config: dict, given: Sequence[str]) -> list[str]:
    """The label names in id order: --data.labels, else the checkpoint's config.json id2label."""
    if given:
        return list(given)
    id2label = hf_config.get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)]


def prepare(
    task_name: str, model: nn.Module, hf_config: dict, d: HeldOutData, where: str
) -> tuple[HeldOutTask, list[str], HeldOutData, list]:
    """Check the checkpoint fits the task, resolve labels and lengths, read the file."""
    if task_name not in HELD_OUT_TASKS:
        raise ConfigError(f"task {task_name!r} is not one of {', '.join(HELD_OUT_TASKS)}")
    task = HELD_OUT_TASKS[task_name]
    if not d.eval_file:
        raise ConfigError("--data.eval_file is required: the file to score")
    head = getattr(model, "head", None)
    expected = _HEADS.get(task_name)
    if expected is not None and not isinstance(head, expected):
        raise ConfigError(
            f"{where} has a {type(head).__name__ if head is not None else 'bare'} model, not the "
            f"{expected.__name__} a {task_name} task needs"
        )
    labels = checkpoint_labels(hf_config, d.labels)
    if task.needs_labels and not labels:
        raise ConfigError(f"{where}: config.json has no id2label; give the label names with --data.labels")
    if task.needs_labels and head is not None:
        n = getattr(getattr(head, "classifier", None), "out_features", len(labels))
        if n != len(labels):
            raise ConfigError(f"{where}: the head predicts {n} labels but {len(labels)} names are given")
    d = resolve_lengths(d, task.max_length, model)
    records = task.read(d, d.eval_file, labels if task.needs_labels else None)
    if d.max_eval_examples > 0:
        records = records[: d.max_eval_examples]
    return task, labels, d, records
