"""Task encoders and collators: records -> token ids and targets, and model outputs -> task predictions.

- Classification (single sentence or pair): `encode_classification` -> input_ids, token_type_ids, label.
- Token classification: `encode_tagging` labels the first sub-word of each word and gives every other
  sub-word (and special tokens) -100, so the loss counts each word once (BERT paper, section 4.3);
  `word_predictions` maps per-token predictions back to one prediction per word.
- Extractive QA: `encode_qa` cuts a long context into overlapping windows of `max_length` tokens that share
  `stride` tokens (question repeated in each), keeps each context token's character offsets, and marks the
  answer's first and last token (or the [CLS] position when the window does not hold the whole answer,
  as in the SQuAD fine-tuning of BERT); `best_spans` searches every window of an example for the highest
  start + end logit with start <= end, length <= `max_answer_length`, both inside the context, and maps the
  span back to the context's characters.

Encoding goes through the wrapped `tokenizers` backend (offsets, word ids, sequence ids and overflowing
windows), which is the same code transformers' fast tokenizers run, so features equal theirs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tokenizers import Tokenizer as RustTokenizer
from torch import Tensor

from plmkit.data.records import LabeledText, QAExample, TaggedTokens
from plmkit.data.tokenizer import Tokenizer
from plmkit.errors import DataError

IGNORE_INDEX = -100


def _truncating(tokenizer: Tokenizer, max_length: int, stride: int = 0, strategy: str = "longest_first"):
    """A copy of the backend with truncation on, so the shared tokenizer's settings never change."""
    backend = RustTokenizer.from_str(tokenizer.backend.to_str())
    backend.no_padding()
    backend.enable_truncation(max_length, stride=stride, strategy=strategy)
    return backend


def _label_ids(labels: Sequence[str]) -> dict[str, int]:
    return {label: i for i, label in enumerate(labels)}


# ---- classification ------------------------------------------------------------------------------------


def encode_classification(
    tokenizer: Tokenizer, records: Sequence[LabeledText], labels: Sequence[str], max_length: int = 128
) -> list[dict[str, Any]]:
    """`LabeledText` (with or without `text_pair`) -> {input_ids, token_type_ids, labels} per record."""
    label_ids = _label_ids(labels)
    backend = _truncating(tokenizer, max_length)
    singles = [r.text if r.text_pair is None else (r.text, r.text_pair) for r in records]
    features = []
    for i, (record, enc) in enumerate(zip(records, backend.encode_batch(singles), strict=True)):
        if record.label not in label_ids:
            raise DataError(f"example {i}: label {record.label!r} is not in the label set {list(labels)}")
        features.append(
            {"input_ids": enc.ids, "token_type_ids": enc.type_ids, "labels": label_ids[record.label]}
        )
    return features


# ---- token classification ------------------------------------------------------------------------------


def encode_tagging(
    tokenizer: Tokenizer, records: Sequence[TaggedTokens], labels: Sequence[str], max_length: int = 128
) -> list[dict[str, Any]]:
    """`TaggedTokens` -> {input_ids, token_type_ids, labels, word_ids}; labels on first sub-words only.

    `word_ids[j]` is the word of token j (None for special tokens); words cut off by `max_length` get no
    label and are predicted as the first label (normally "O") by `word_predictions`.
    """
    label_ids = _label_ids(labels)
    backend = _truncating(tokenizer, max_length)
    encodings = backend.encode_batch([list(r.tokens) for r in records], is_pretokenized=True)
    features = []
    for i, (record, enc) in enumerate(zip(records, encodings, strict=True)):
        targets = []
        previous = None
        for word in enc.word_ids:
            if word is None or word == previous:
                targets.append(IGNORE_INDEX)
            else:
                tag = record.tags[word]
                if tag not in label_ids:
                    raise DataError(f"sentence {i}: tag {tag!r} is not in the label set {list(labels)}")
                targets.append(label_ids[tag])
            previous = word
        features.append(
            {
                "input_ids": enc.ids,
                "token_type_ids": enc.type_ids,
                "labels": targets,
                "word_ids": enc.word_ids,
            }
        )
    return features


def word_predictions(
    token_predictions: Sequence[int], word_ids: Sequence[int | None], num_words: int
) -> list[int]:
    """Per-token predicted label ids -> one per word (its first sub-word's); words never seen get 0."""
    words = [0] * num_words
    seen = set()
    for prediction, word in zip(token_predictions, word_ids, strict=False):
        if word is not None and word not in seen:
            words[word] = int(prediction)
            seen.add(word)
    return words


# ---- extractive question answering ---------------------------------------------------------------------


@dataclass
class QAFeature:
    """One window of one example. `offsets[j]` is the (start, end) characters of context token j, or None
    for question, special and padding tokens."""

    example_index: int
    input_ids: list[int]
    token_type_ids: list[int]
    offsets: list[tuple[int, int] | None]
    start_position: int = 0
    end_position: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_ids": self.input_ids,
            "token_type_ids": self.token_type_ids,
            "start_positions": self.start_position,
            "end_positions": self.end_position,
        }


def encode_qa(
    tokenizer: Tokenizer, examples: Sequence[QAExample], max_length: int = 384, stride: int = 128
) -> list[QAFeature]:
    """Question + context -> windows over the context; each window labelled with its answer's tokens.

    The question is stripped of leading whitespace (as in the SQuAD scripts); the first answer is the
    training target. A window that does not hold the whole answer points start and end at position 0.
    """
    if stride >= max_length:
        raise DataError(f"stride {stride} must be smaller than max_length {max_length}")
    backend = _truncating(tokenizer, max_length, stride=stride, strategy="only_second")
    pairs = [(e.question.lstrip(), e.context) for e in examples]
    try:
        encodings = backend.encode_batch(pairs)
    except Exception as e:  # the Rust tokenizer raises when the question alone exceeds max_length
        raise DataError(
            f"cannot fit the question and a context window into max_length {max_length}: {e}"
        ) from None
    features = []
    for index, (example, first) in enumerate(zip(examples, encodings, strict=True)):
        for enc in [first, *first.overflowing]:
            sequence_ids = enc.sequence_ids
            offsets = [tuple(o) if s == 1 else None for o, s in zip(enc.offsets, sequence_ids, strict=True)]
            feature = QAFeature(index, enc.ids, enc.type_ids, offsets)
            if example.answers:
                answer = example.answers[0]
                start_char, end_char = answer.start, answer.start + len(answer.text)
                context_tokens = [j for j, o in enumerate(offsets) if o is not None]
                if (
                    context_tokens
                    and offsets[context_tokens[0]][0] <= start_char
                    and (offsets[context_tokens[-1]][1] >= end_char)
                ):
                    # The SQuAD scripts' rule: last token starting at or before the answer, first token
                    # ending at or after it.
                    feature.start_position = max(j for j in context_tokens if offsets[j][0] <= start_char)
                    feature.end_position = min(j for j in context_tokens if offsets[j][1] >= end_char)
            features.append(feature)
    return features


def best_spans(
    features: Sequence[QAFeature],
    start_logits: Sequence[Sequence[float]] | Tensor,
    end_logits: Sequence[Sequence[float]] | Tensor,
    examples: Sequence[QAExample],
    max_answer_length: int = 30,
    n_best: int = 20,
) -> dict[str, str]:
    """Highest-scoring valid span over all windows of each example -> {example id: answer text}.

    Only the `n_best` highest start and end logits of each window are paired (as the SQuAD scripts do); a
    span is valid when both ends are context tokens, start <= end and it spans at most `max_answer_length`
    tokens. An example with no valid span answers "".
    """
    best: dict[int, tuple[float, str]] = {}
    for k, feature in enumerate(features):
        starts = torch.as_tensor(start_logits[k], dtype=torch.float32)[: len(feature.offsets)]
        ends = torch.as_tensor(end_logits[k], dtype=torch.float32)[: len(feature.offsets)]
        context = examples[feature.example_index].context
        top_starts = torch.argsort(starts, descending=True)[:n_best].tolist()
        top_ends = torch.argsort(ends, descending=True)[:n_best].tolist()
        for s in top_starts:
            if feature.offsets[s] is None:
                continue
            for e in top_ends:
                if feature.offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(starts[s] + ends[e])
                current = best.get(feature.example_index)
                if current is None or score > current[0]:
                    best[feature.example_index] = (
                        score,
                        context[feature.offsets[s][0] : feature.offsets[e][1]],
                    )
    return {example.id: best.get(i, (0.0, ""))[1] for i, example in enumerate(examples)}


# ---- batching ------------------------------------------------------------------------------------------


def collate(features: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Tensor]:
    """Right-pad a list of feature dicts into tensors: input_ids (pad_id), attention_mask, token_type_ids (0),
    per-token labels (-100); scalar labels / start_positions / end_positions stack as (B,)."""
    if not features:
        raise DataError("cannot collate an empty batch")
    length = max(len(f["input_ids"]) for f in features)
    batch: dict[str, Tensor] = {}

    def padded(key: str, value: int) -> Tensor:
        return torch.tensor(
            [list(f[key]) + [value] * (length - len(f[key])) for f in features], dtype=torch.long
        )

    batch["input_ids"] = padded("input_ids", pad_id)  # (B, T)
    batch["attention_mask"] = torch.tensor(
        [[1] * len(f["input_ids"]) + [0] * (length - len(f["input_ids"])) for f in features], dtype=torch.long
    )
    if "token_type_ids" in features[0]:
        batch["token_type_ids"] = padded("token_type_ids", 0)
    for key in ("labels", "start_positions", "end_positions"):
        if key not in features[0]:
            continue
        if isinstance(features[0][key], int):
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)  # (B,)
        else:
            batch[key] = padded(key, IGNORE_INDEX)  # (B, T)
    return batch
