"""BLEU, ROUGE and exact match now live in `plmkit.metrics` with the other metrics; this name stays
importable for code written against it."""

from plmkit.metrics import bleu, exact_match, rouge, rouge_l

__all__ = ["bleu", "exact_match", "rouge", "rouge_l"]
