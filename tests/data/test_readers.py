"""Readers on the real shared datasets and on bad inputs (one-line errors naming file and line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shared_paths import require_data

from plmkit.data.readers import read_conll, read_glue_tsv, read_records, read_squad
from plmkit.data.records import LabeledText, PreferencePair, PromptCompletion, TaggedTokens
from plmkit.errors import DataError


def test_sst2_dev_reads_all_rows_with_binary_labels():
    records = read_glue_tsv(require_data("sst2", "dev.tsv"), labels=["0", "1"])
    assert len(records) == 872
    assert records[0] == LabeledText("it 's a charming and often affecting journey .", "1")
    assert {r.label for r in records} == {"0", "1"}


def test_conll2003_counts_match_the_source_card():
    train = read_conll(require_data("conll2003", "eng.testa"))
    assert len(train) == 3250
    assert sum(len(s.tokens) for s in train) == 51362
    assert sum(t == "B-PER" for s in train for t in s.tags) == 1842
    assert all("-DOCSTART-" not in s.tokens for s in train)


def test_conll2003_first_sentence():
    first = read_conll(require_data("conll2003", "eng.train"))[0]
    assert first.tokens[:3] == ["EU", "rejects", "German"]
    assert first.tags[:3] == ["B-ORG", "O", "B-MISC"]


def test_wnut17_whitespace_only_lines_separate_sentences():
    assert len(read_conll(require_data("wnut17", "wnut17train.conll"))) == 3394
    assert len(read_conll(require_data("wnut17", "emerging.dev.conll"))) == 1009


def test_xquad_reads_every_question_and_checks_answers():
    examples = read_squad(require_data("xquad_en", "xquad.en.json"))
    assert len(examples) == 1190
    assert len({e.title for e in examples}) == 48
    ex = examples[0]
    assert ex.id == "56beb4343aeaaa14008c925b"
    assert ex.answers[0].text == "308"
    assert ex.context[ex.answers[0].start :].startswith("308")


def test_conll_docstart_and_whitespace_lines(tmp_path):
    path = tmp_path / "x.conll"
    path.write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n \t \nPeter NNP B-NP B-PER\n"
    )
    sentences = read_conll(path)
    assert sentences == [TaggedTokens(["EU", "rejects"], ["B-ORG", "O"]), TaggedTokens(["Peter"], ["B-PER"])]


def test_malformed_conll_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(DataError, match=rf"^{path}:2: malformed line 'rejects': expected a token and a tag$"):
        read_conll(path)


def test_conll_tag_outside_label_set(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("EU B-ORG\n\nrejects B-FOO\n")
    with pytest.raises(DataError, match=rf"^{path}:3: label 'B-FOO' is not in the label set"):
        read_conll(path, labels=["O", "B-ORG", "I-ORG"])


def test_malformed_tsv_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("sentence\tlabel\ngood\t1\nno label here\n")
    with pytest.raises(DataError, match=rf"^{path}:3: malformed line: 1 tab-separated fields, header has 2$"):
        read_glue_tsv(path)


def test_tsv_label_outside_label_set(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("sentence\tlabel\ngood\t1\nbad\t2\n")
    with pytest.raises(DataError, match=rf"^{path}:3: label '2' is not in the label set \['0', '1'\]$"):
        read_glue_tsv(path, labels=["0", "1"])


def test_tsv_missing_column(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("text\tlabel\ngood\t1\n")
    with pytest.raises(DataError, match=rf"^{path}:1: header has no column 'sentence'"):
        read_glue_tsv(path)


@pytest.mark.parametrize("reader", [read_glue_tsv, read_conll, read_squad])
def test_empty_file(tmp_path, reader):
    path = tmp_path / "empty.txt"
    path.write_text("\n \n")
    with pytest.raises(DataError, match=rf"^data file {path} is empty$"):
        reader(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_conll(tmp_path / "nope.conll")


def _squad(tmp_path, answer_start: int) -> Path:
    data = {
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "Paris is the capital of France.",
                        "qas": [
                            {
                                "id": "q1",
                                "question": "Capital?",
                                "answers": [{"text": "Paris", "answer_start": answer_start}],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(data))
    return path


def test_squad_answer_not_in_context_names_example(tmp_path):
    path = _squad(tmp_path, answer_start=3)
    with pytest.raises(
        DataError, match=rf"^{path}: example q1: answer 'Paris' is not in its context at answer_start 3$"
    ):
        read_squad(path)
    assert read_squad(_squad(tmp_path, 0))[0].answers[0].start == 0


def test_squad_invalid_json_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"data": [\n  {"title": }\n]}')
    with pytest.raises(DataError, match=rf"^{path}:2: not valid JSON"):
        read_squad(path)


def test_jsonl_and_csv_with_named_columns(tmp_path):
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(
        '{"q": "hi", "good": "hello", "bad": "go away"}\n\n{"q": "a", "good": "b", "bad": "c"}\n'
    )
    pairs = read_records(jsonl, PreferencePair, {"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert pairs == [PreferencePair("hi", "hello", "go away"), PreferencePair("a", "b", "c")]
    csv_path = tmp_path / "reviews.csv"
    csv_path.write_text('review,stars\n"great, really",5\nmeh,2\n')
    rows = read_records(csv_path, LabeledText, {"text": "review", "label": "stars"}, labels=["1", "2", "5"])
    assert rows == [LabeledText("great, really", "5"), LabeledText("meh", "2")]


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"\n')
    with pytest.raises(DataError, match=rf"^{path}:2: malformed JSON line"):
        read_records(path, PromptCompletion)
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(
        DataError, match=rf"^{path}:2: missing column 'completion' for PromptCompletion.completion$"
    ):
        read_records(path, PromptCompletion)


def test_csv_label_outside_set_and_ragged_row(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("text,label\na,pos\nb,maybe\n")
    with pytest.raises(DataError, match=rf"^{path}:3: label 'maybe' is not in the label set"):
        read_records(path, LabeledText, labels=["pos", "neg"])
    path.write_text("text,label\na,pos,extra\n")
    with pytest.raises(DataError, match=rf"^{path}:2: malformed line: 3 fields, header has 2$"):
        read_records(path, LabeledText)
