"""Metrics: entity scores equal seqeval's, SQuAD EM/F1 golden values, accuracy and F1 by hand."""

from __future__ import annotations

import random

import pytest
import seqeval.metrics
from seqeval.metrics.sequence_labeling import get_entities as seqeval_entities
from shared_paths import require_data

from plmkit.data.readers import read_conll
from plmkit.metrics import (
    accuracy,
    entity_scores,
    f1_binary,
    f1_macro,
    get_entities,
    normalize_answer,
    squad_exact_match,
    squad_f1,
    squad_scores,
)

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def test_accuracy_and_f1_by_hand():
    pred = [1, 0, 1, 1, 0, 1]
    gold = [1, 0, 0, 1, 1, 1]
    assert accuracy(pred, gold) == pytest.approx(4 / 6)
    # class 1: tp=3, predicted 4, actual 4 -> F1=0.75; class 0: tp=1, predicted 2, actual 2 -> 0.5
    assert f1_binary(pred, gold) == pytest.approx(0.75)
    assert f1_macro(pred, gold) == pytest.approx((0.75 + 0.5) / 2)
    assert f1_binary([0, 0], [0, 0]) == 0.0
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        accuracy([1, 1, 1], [1, 1])


def test_entities_follow_conlleval_rules():
    assert get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    # A dangling I- starts an entity; a type change ends one.
    assert get_entities(["I-PER", "I-LOC", "O", "I-MISC", "I-MISC"]) == [
        ("PER", 0, 0),
        ("LOC", 1, 1),
        ("MISC", 3, 4),
    ]


def _noisy(tags: list[str], rng: random.Random, rate: float) -> list[str]:
    return [rng.choice(TAGS) if rng.random() < rate else t for t in tags]


@pytest.mark.filterwarnings("ignore")
def test_entity_scores_equal_seqeval_on_random_sequences():
    rng = random.Random(0)
    for _ in range(30):
        gold = [[rng.choice(TAGS) for _ in range(rng.randint(1, 12))] for _ in range(rng.randint(1, 8))]
        pred = [_noisy(s, rng, 0.3) for s in gold]
        for seq in gold + pred:
            assert get_entities(seq) == seqeval_entities(seq)
        ours = entity_scores(pred, gold)
        assert ours["precision"] == pytest.approx(seqeval.metrics.precision_score(gold, pred))
        assert ours["recall"] == pytest.approx(seqeval.metrics.recall_score(gold, pred))
        assert ours["f1"] == pytest.approx(seqeval.metrics.f1_score(gold, pred))


def test_entity_scores_equal_seqeval_on_conll_dev_with_noise():
    gold = [s.tags for s in read_conll(require_data("conll2003", "eng.testa"))[:400]]
    rng = random.Random(1)
    tags = sorted({t for s in gold for t in s})
    pred = [[rng.choice(tags) if rng.random() < 0.1 else t for t in s] for s in gold]
    ours = entity_scores(pred, gold)
    assert ours["f1"] == pytest.approx(seqeval.metrics.f1_score(gold, pred), abs=1e-12)
    assert ours["precision"] == pytest.approx(seqeval.metrics.precision_score(gold, pred), abs=1e-12)
    assert ours["recall"] == pytest.approx(seqeval.metrics.recall_score(gold, pred), abs=1e-12)
    report = seqeval.metrics.classification_report(gold, pred, output_dict=True)
    for type_, row in ours["per_type"].items():
        assert row["f1"] == pytest.approx(report[type_]["f1-score"])
        assert row["support"] == report[type_]["support"]
    assert entity_scores(gold, gold)["f1"] == 1.0


def test_squad_normalization_golden():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Theory") == "theory"  # articles only as whole words


def test_squad_em_f1_golden():
    assert squad_exact_match("the Denver Broncos", "Denver Broncos") == 1.0
    # pred tokens [denver, broncos, won], gold [denver, broncos]: P=2/3, R=1 -> F1 = 0.8
    assert squad_f1("Denver Broncos won", "Denver Broncos") == pytest.approx(0.8)
    assert squad_f1("Carolina", "Denver Broncos") == 0.0
    preds = {"a": "Denver Broncos won", "b": "1990", "c": "nothing"}
    refs = {"a": ["Denver Broncos", "Broncos"], "b": ["in 1990", "1990"], "c": ["something"], "d": ["x"]}
    scores = squad_scores(preds, refs)
    # EM: a 0, b 1, c 0, d missing 0 -> 25.0; F1: a max(0.8, 0.5)=0.8, b 1, c 0, d 0 -> 45.0
    assert scores["exact_match"] == pytest.approx(25.0)
    assert scores["f1"] == pytest.approx(45.0)


def test_text_metrics_live_in_metrics_and_the_old_module_reexports_them():
    import plmkit.metrics as metrics
    import plmkit.metrics_text as metrics_text

    for name in ("bleu", "rouge", "rouge_l", "exact_match"):
        assert getattr(metrics_text, name) is getattr(metrics, name)
    assert metrics.bleu.__module__ == "plmkit.metrics"
