"""Sentence-pair objectives: next-sentence prediction (BERT, Devlin et al. 2019, sec. 3.1 "Task #2")
and sentence-order prediction (ALBERT, Lan et al. 2020, sec. 4.2).

Both read documents as lists of tokenized sentences and cut them into pairs of segments A and B that
together fill `[CLS] A [SEP] B [SEP]` up to `max_length` (a segment is one or more whole sentences,
as in Google's `create_pretraining_data.py`):
- NSP: label 0 ("IsNext", 50%) when B is the text that follows A; label 1 ("NotNext", 50%) when B is
  a segment of another, random document. RoBERTa (sec. 4.2) found the task does not help.
- SOP: A and B are always consecutive; label 0 in order, label 1 swapped (50%). Both halves come from
  the same document, so topic cues cannot solve it, only coherence.
Token types are 0 for `[CLS] A [SEP]` and 1 for `B [SEP]`. The loss is a two-way cross-entropy on the
pre-training head's `pair_logits`.

Shape legend: B batch, T length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plmkit.errors import ConfigError, DataError

Document = Sequence[Sequence[int]]  # sentences of token ids


@dataclass
class SentencePair:
    """One pre-training example: `[CLS] A [SEP] B [SEP]` with its token types and pair label."""

    input_ids: list[int]
    token_type_ids: list[int]
    label: int  # NSP: 0 next, 1 random; SOP: 0 in order, 1 swapped


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(high, (), generator=generator))


def _truncate(a: list[int], b: list[int], budget: int) -> None:
    """Trim the longer segment until A + B fits (in place): A loses its first tokens and B its last,
    so the boundary between them, which the pair label is about, stays intact."""
    while len(a) + len(b) > budget:
        if len(a) > len(b):
            del a[0]
        else:
            b.pop()


def _pair(a: list[int], b: list[int], label: int, cls_id: int, sep_id: int) -> SentencePair:
    ids = [cls_id, *a, sep_id, *b, sep_id]
    types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
    return SentencePair(input_ids=ids, token_type_ids=types, label=label)


def _chunks(document: Document, budget: int) -> list[list[Sequence[int]]]:
    """Consecutive sentences grouped until each group holds about `budget` tokens."""
    chunks, current, length = [], [], 0
    for sentence in document:
        if not sentence:
            continue
        current.append(sentence)
        length += len(sentence)
        if length >= budget:
            chunks.append(current)
            current, length = [], 0
    if current:
        chunks.append(current)
    return chunks


def _split_chunk(chunk: list[Sequence[int]], generator: torch.Generator) -> tuple[list[int], list[int]]:
    """A chunk cut into two consecutive segments at a random sentence boundary; a one-sentence chunk
    is cut inside its sentence, so that every chunk can give a true-next (or in-order) pair."""
    if len(chunk) > 1:
        split = 1 + _randint(len(chunk) - 1, generator)
        return [t for s in chunk[:split] for t in s], [t for s in chunk[split:] for t in s]
    tokens = list(chunk[0])
    cut = 1 + _randint(len(tokens) - 1, generator) if len(tokens) > 1 else 1
    return tokens[:cut], tokens[cut:]


def _check(documents: Sequence[Document], max_length: int, need_two_docs: bool) -> None:
    if max_length < 5:
        raise ConfigError(f"max_length must be at least 5 for [CLS] A [SEP] B [SEP], got {max_length}")
    non_empty = sum(1 for d in documents if any(len(s) for s in d))
    if non_empty == 0:
        raise DataError("no sentences: every document is empty")
    if need_two_docs and non_empty < 2:
        raise DataError("next-sentence prediction needs at least two non-empty documents for random segments")


def build_nsp_pairs(documents: Sequence[Document], max_length: int, cls_id: int, sep_id: int,
                    generator: torch.Generator) -> list[SentencePair]:
    """NSP examples from documents of tokenized sentences: 50% true next segment (label 0), 50% a
    segment from another document (label 1)."""
    _check(documents, max_length, need_two_docs=True)
    budget = max_length - 3
    pairs: list[SentencePair] = []
    for d, document in enumerate(documents):
        for chunk in _chunks(document, budget):
            a, rest = _split_chunk(chunk, generator)
            if _uniform(generator) < 0.5:
                # Label 1: B starts at a random sentence of another document and runs to fill the budget.
                other = d
                while other == d or not any(len(s) for s in documents[other]):
                    other = _randint(len(documents), generator)
                sentences = [s for s in documents[other] if s]
                start = _randint(len(sentences), generator)
                b: list[int] = []
                for s in sentences[start:]:
                    if len(b) >= budget - len(a):
                        break
                    b.extend(s)
                label = 1
            else:
                b, label = rest, 0
            a, b = list(a), list(b)
            _truncate(a, b, budget)
            if not a or not b:
                continue
            pairs.append(_pair(a, b, label, cls_id, sep_id))
    return pairs


def build_sop_pairs(documents: Sequence[Document], max_length: int, cls_id: int, sep_id: int,
                    generator: torch.Generator) -> list[SentencePair]:
    """SOP examples: two consecutive segments of one document, swapped with probability 0.5 (label 1)."""
    _check(documents, max_length, need_two_docs=False)
    budget = max_length - 3
    pairs: list[SentencePair] = []
    for document in documents:
        for chunk in _chunks(document, budget):
            a, b = _split_chunk(chunk, generator)
            if not b:
                continue
            _truncate(a, b, budget)
            swapped = _uniform(generator) < 0.5
            pairs.append(_pair(b, a, 1, cls_id, sep_id) if swapped else _pair(a, b, 0, cls_id, sep_id))
    return pairs


def pairs_from_windows(windows: torch.Tensor, task: str, cls_id: int, sep_id: int,
                       generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Sentence pairs made on the fly from packed token windows (B, T), for pre-training on a token
    store that keeps no sentence boundaries. Each window's first half is A and its second half B
    (cut so that `[CLS] A [SEP] B [SEP]` is T long). NSP (label 1, 50%): B is replaced by the second
    half of the next window in the batch, a random stretch of the shuffled corpus. SOP (label 1, 50%):
    A and B are swapped. Returns `input_ids`, `token_type_ids` (B, T) and `pair_labels` (B,).
    """
    if task not in ("nsp", "sop"):
        raise ConfigError(f"pair task must be 'nsp' or 'sop', got {task!r}")
    b, t = windows.shape
    if t < 5:
        raise ConfigError(f"windows of {t} tokens are too short for [CLS] A [SEP] B [SEP]")
    if task == "nsp" and b < 2:
        raise ConfigError("next-sentence prediction on packed windows needs a batch of at least 2")
    labels = (torch.rand(b, generator=generator) < 0.5).long().to(windows.device)
    half = (t - 3) // 2
    firsts, seconds = windows[:, :half], windows[:, half:t - 3]
    ids, types = [], []
    for i in range(b):
        a, second = firsts[i], seconds[i]
        if labels[i] and task == "nsp":
            second = seconds[(i + 1) % b]
        elif labels[i]:
            a, second = second, a
        cls, sep = windows.new_tensor([cls_id]), windows.new_tensor([sep_id])
        ids.append(torch.cat([cls, a, sep, second, sep]))
        types.append(torch.cat([torch.zeros(len(a) + 2), torch.ones(len(second) + 1)]).long())
    return {"input_ids": torch.stack(ids), "token_type_ids": torch.stack(types).to(windows.device),
            "pair_labels": labels}


def collate_pairs(pairs: Sequence[SentencePair], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of pairs into `input_ids`, `token_type_ids`, `attention_mask` (B, T) and
    `pair_labels` (B,)."""
    t = max(len(p.input_ids) for p in pairs)
    ids = torch.full((len(pairs), t), pad_id, dtype=torch.long)
    types = torch.zeros(len(pairs), t, dtype=torch.long)
    mask = torch.zeros(len(pairs), t, dtype=torch.long)
    for i, p in enumerate(pairs):
        n = len(p.input_ids)
        ids[i, :n] = torch.tensor(p.input_ids)
        types[i, :n] = torch.tensor(p.token_type_ids)
        mask[i, :n] = 1
    labels = torch.tensor([p.label for p in pairs], dtype=torch.long)
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "pair_labels": labels}


def pair_loss(pair_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed two-way cross-entropy over sequences: pair_logits (B, 2), labels (B,) -> (loss_sum (), B).

    loss_sum = -sum_b log softmax(pair_logits[b])[labels[b]]
    """
    return F.cross_entropy(pair_logits.float(), labels, reduction="sum"), labels.shape[0]
