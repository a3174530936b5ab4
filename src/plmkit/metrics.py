"""Task metrics: accuracy and F1 for classification, entity-level P/R/F1 for tagging, SQuAD EM/F1 for QA,
BLEU, ROUGE and exact match for generated text.

All take plain Python sequences (labels as strings or ints) and return floats in [0, 1], except the SQuAD
metrics, which follow the official script and report percentages, and BLEU/ROUGE (0-100, as published).

BLEU is sacrebleu's corpus BLEU (Post 2018: its default 13a tokenization makes scores comparable across
papers); ROUGE is Google's `rouge-score` (the reference re-implementation of Lin 2004), F-measure
averaged over examples, with Porter stemming as in the summarization literature. Both packages are
imported when first used.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Hashable, Sequence

from plmkit.errors import DataError


def accuracy(predictions: Sequence[Hashable], references: Sequence[Hashable]) -> float:
    """Fraction of predictions equal to their reference."""
    _same_length(predictions, references)
    return sum(p == r for p, r in zip(predictions, references, strict=True)) / len(references)


def _same_length(predictions: Sequence[object], references: Sequence[object]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not references:
        raise ValueError("no references to score")


def _prf(true_positives: int, predicted: int, actual: int) -> tuple[float, float, float]:
    # Zero denominators give 0, as scikit-learn and seqeval do (with zero_division="warn").
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def f1_binary(
    predictions: Sequence[Hashable], references: Sequence[Hashable], positive: Hashable = 1
) -> float:
    """F1 of the `positive` class."""
    _same_length(predictions, references)
    pairs = list(zip(predictions, references, strict=True))
    tp = sum(p == positive and r == positive for p, r in pairs)
    return _prf(tp, sum(p == positive for p, _ in pairs), sum(r == positive for _, r in pairs))[2]


def f1_macro(
    predictions: Sequence[Hashable], references: Sequence[Hashable], labels: Sequence[Hashable] | None = None
) -> float:
    """Unweighted mean of per-class F1 over `labels` (default: every class seen in either sequence)."""
    _same_length(predictions, references)
    classes = list(labels) if labels is not None else sorted(set(predictions) | set(references), key=str)
    return sum(f1_binary(predictions, references, c) for c in classes) / len(classes)


# ---------------------------------------------------------------------------------------------------------
# Entity-level metrics: the chunking rules of seqeval's default (conlleval-compatible, non-strict) mode, so
# an I- tag after O or after another type starts a new entity, as conlleval does.


def _chunk_end(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != type_


def _chunk_start(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S") and tag in ("E", "I"):
        return True
    if prev_tag == "O" and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != type_


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """IOB2 (also IOB1/IOBES) tags of one sequence -> (type, first, last) spans, inclusive."""
    entities = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag = chunk[0]
        type_ = chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _chunk_end(prev_tag, tag, prev_type, type_):
            entities.append((prev_type, begin, i - 1))
        if _chunk_start(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return entities


def entity_scores(
    predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]
) -> dict[str, float | dict[str, dict[str, float]]]:
    """Micro precision/recall/F1 over exactly matching entity spans, plus the same per entity type.

    Equal to seqeval's `precision_score`, `recall_score`, `f1_score` (default mode) on the same lists.
    """
    _same_length(predictions, references)
    pred_spans: set[tuple[int, str, int, int]] = set()
    true_spans: set[tuple[int, str, int, int]] = set()
    for n, (pred, ref) in enumerate(zip(predictions, references, strict=True)):
        if len(pred) != len(ref):
            raise ValueError(f"sequence {n}: {len(pred)} predicted tags but {len(ref)} reference tags")
        pred_spans.update((n, *e) for e in get_entities(pred))
        true_spans.update((n, *e) for e in get_entities(ref))
    p, r, f = _prf(len(pred_spans & true_spans), len(pred_spans), len(true_spans))
    per_type = {}
    for type_ in sorted({s[1] for s in true_spans | pred_spans}):
        tp_ = {s for s in pred_spans if s[1] == type_}
        tt_ = {s for s in true_spans if s[1] == type_}
        tp, tr, tf = _prf(len(tp_ & tt_), len(tp_), len(tt_))
        per_type[type_] = {"precision": tp, "recall": tr, "f1": tf, "support": float(len(tt_))}
    return {"precision": p, "recall": r, "f1": f, "per_type": per_type}


# ---------------------------------------------------------------------------------------------------------
# SQuAD v1.1: the official evaluate-v1.1.py normalization and scoring.


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace (official SQuAD rule)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad_exact_match(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def squad_f1(prediction: str, ground_truth: str) -> float:
    """Token-overlap F1 between normalized answers."""
    pred_tokens = normalize_answer(prediction).split()
    true_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(pred_tokens) & collections.Counter(true_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(true_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], references: dict[str, Sequence[str]]) -> dict[str, float]:
    """Exact match and F1 in percent, each the max over an example's reference answers, averaged over
    every referenced example (a missing prediction scores 0, as in the official script)."""
    if not references:
        raise ValueError("no references to score")
    em = f1 = 0.0
    for qid, answers in references.items():
        if qid not in predictions:
            continue
        em += max(squad_exact_match(predictions[qid], a) for a in answers)
        f1 += max(squad_f1(predictions[qid], a) for a in answers)
    return {"exact_match": 100.0 * em / len(references), "f1": 100.0 * f1 / len(references)}


# ---- generated text: BLEU, ROUGE, exact match ------------------------------------------------------


def _check_texts(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise DataError("no hypotheses to score")


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) of one reference per hypothesis."""
    import sacrebleu

    _check_texts(hypotheses, references)
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def rouge(
    hypotheses: Sequence[str],
    references: Sequence[str],
    kinds: Sequence[str] = ("rouge1", "rouge2", "rougeL"),
) -> dict[str, float]:
    """Mean ROUGE F-measure (0-100) per kind ("rouge1", "rouge2", "rougeL", "rougeLsum")."""
    from rouge_score import rouge_scorer

    _check_texts(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    totals = dict.fromkeys(kinds, 0.0)
    for hyp, ref in zip(hypotheses, references):
        scores = scorer.score(ref, hyp)
        for kind in kinds:
            totals[kind] += scores[kind].fmeasure
    return {kind: 100.0 * total / len(hypotheses) for kind, total in totals.items()}


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (0-100)."""
    return rouge(hypotheses, references, ("rougeL",))["rougeL"]


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Fraction (0-1) of hypotheses equal to their reference after stripping surrounding whitespace."""
    _check_texts(hypotheses, references)
    return sum(h.strip() == r.strip() for h, r in zip(hypotheses, references)) / len(hypotheses)
