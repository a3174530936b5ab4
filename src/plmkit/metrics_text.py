"""Generation metrics through the standard packages, so scores compare with published ones.

BLEU is sacrebleu's corpus BLEU (Post 2018: its default 13a tokenization makes scores comparable across
papers); ROUGE is Google's `rouge-score` (the reference re-implementation of Lin 2004), F-measure
averaged over examples, with Porter stemming as in the summarization literature.
"""

from __future__ import annotations

from collections.abc import Sequence

from plmkit.errors import DataError


def _check(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        raise DataError("no hypotheses to score")


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) of one reference per hypothesis."""
    import sacrebleu

    _check(hypotheses, references)
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def rouge(
    hypotheses: Sequence[str],
    references: Sequence[str],
    kinds: Sequence[str] = ("rouge1", "rouge2", "rougeL"),
) -> dict[str, float]:
    """Mean ROUGE F-measure (0-100) per kind ("rouge1", "rouge2", "rougeL", "rougeLsum")."""
    from rouge_score import rouge_scorer

    _check(hypotheses, references)
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
    _check(hypotheses, references)
    return sum(h.strip() == r.strip() for h, r in zip(hypotheses, references)) / len(hypotheses)
