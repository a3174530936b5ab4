"""Readers for task data files, each returning a list of records from `plmkit.data.records`.

- `read_glue_tsv`: GLUE TSV with a header row (SST-2: `sentence<TAB>label`; pair tasks name two columns).
- `read_conll`: one token per line, the tag in the last column, sentences separated by blank or
  whitespace-only lines; `-DOCSTART-` lines (CoNLL-2003 document markers) are skipped. Covers CoNLL-2003
  (`EU NNP B-NP B-ORG`) and WNUT-17 (`@paulwalk<TAB>O`).
- `read_squad`: SQuAD v1.1 JSON (also XQuAD); every answer must be found at its `answer_start`.
- `read_records`: generic JSONL / CSV / TSV with named columns into any record type.

Bad input (an empty file, a malformed line, a label outside the label set, an answer not in its context)
raises a one-line `DataError` naming the file and the line (or the example id).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from plmkit.data.records import Answer, LabeledText, QAExample, TaggedTokens
from plmkit.errors import DataError

R = TypeVar("R")


def _read_text(path: str | Path) -> str:
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                text = f.read()
        else:
            text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"data file {path} not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"data file {path} is not UTF-8 text: {e.reason} at byte {e.start}") from None
    except OSError as e:
        raise DataError(f"data file {path} cannot be read: {e.strerror or e}") from None
    if not text.strip():
        raise DataError(f"data file {path} is empty")
    return text


def _check_label(label: str, labels: Sequence[str] | None, where: str) -> None:
    if labels is not None and label not in labels:
        raise DataError(f"{where}: label {label!r} is not in the label set {list(labels)}")


def read_glue_tsv(
    path: str | Path,
    text_column: str = "sentence",
    label_column: str = "label",
    pair_column: str | None = None,
    labels: Sequence[str] | None = None,
) -> list[LabeledText]:
    """GLUE-style TSV with a header row -> `LabeledText` records.

    Fields are split on tabs only (no quoting: GLUE sentences contain quote characters). Trailing
    whitespace of each field is kept out of the text, as the SST-2 files end sentences with a space.
    """
    lines = _read_text(path).splitlines()
    header = lines[0].split("\t")
    wanted = [text_column, label_column] + ([pair_column] if pair_column else [])
    for column in wanted:
        if column not in header:
            raise DataError(f"{path}:1: header has no column {column!r} (columns: {', '.join(header)})")
    text_i, label_i = header.index(text_column), header.index(label_column)
    pair_i = header.index(pair_column) if pair_column else None
    records = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataError(
                f"{path}:{number}: malformed line: {len(fields)} tab-separated fields, "
                f"header has {len(header)}"
            )
        label = fields[label_i].strip()
        _check_label(label, labels, f"{path}:{number}")
        pair = fields[pair_i].strip() if pair_i is not None else None
        records.append(LabeledText(text=fields[text_i].strip(), label=label, text_pair=pair))
    if not records:
        raise DataError(f"data file {path} has a header but no examples")
    return records


def read_conll(
    path: str | Path,
    labels: Sequence[str] | None = None,
    token_column: int = 0,
    tag_column: int = -1,
) -> list[TaggedTokens]:
    """CoNLL token-per-line file -> one `TaggedTokens` per sentence.

    Columns are split on tabs when the line has one, else on whitespace. Every line needs at least two
    columns; tags must be in `labels` when given.
    """
    sentences: list[TaggedTokens] = []
    tokens: list[str] = []
    tags: list[str] = []

    def flush() -> None:
        if tokens:
            sentences.append(TaggedTokens(tokens=list(tokens), tags=list(tags)))
            tokens.clear()
            tags.clear()

    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            flush()
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields]
        if fields[0] == "-DOCSTART-":
            flush()
            continue
        if len(fields) < 2 or not fields[token_column] or not fields[tag_column]:
            raise DataError(f"{path}:{number}: malformed line {line.strip()!r}: expected a token and a tag")
        tag = fields[tag_column]
        _check_label(tag, labels, f"{path}:{number}")
        tokens.append(fields[token_column])
        tags.append(tag)
    flush()
    if not sentences:
        raise DataError(f"data file {path} has no sentences")
    return sentences


def read_squad(path: str | Path, check_answers: bool = True) -> list[QAExample]:
    """SQuAD v1.1 JSON (`{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}`) -> `QAExample`s.

    With `check_answers`, every answer's text must appear in the context at its `answer_start`.
    """
    text = _read_text(path)
    try:
        root = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    if not isinstance(root, dict) or not isinstance(root.get("data"), list):
        raise DataError(f"{path}: not SQuAD JSON: expected an object with a 'data' list")
    examples = []
    for a, article in enumerate(root["data"]):
        title = article.get("title", "")
        for p, paragraph in enumerate(article.get("paragraphs", [])):
            context = paragraph.get("context")
            if not isinstance(context, str):
                raise DataError(f"{path}: data[{a}].paragraphs[{p}] has no 'context' string")
            for q, qa in enumerate(paragraph.get("qas", [])):
                qid = str(qa.get("id", f"data[{a}].paragraphs[{p}].qas[{q}]"))
                if not isinstance(qa.get("question"), str):
                    raise DataError(f"{path}: example {qid} has no 'question' string")
                answers = []
                for answer in qa.get("answers", []):
                    try:
                        answer_text, start = str(answer["text"]), int(answer["answer_start"])
                    except (KeyError, TypeError, ValueError):
                        raise DataError(
                            f"{path}: example {qid}: each answer needs 'text' and an integer 'answer_start'"
                        ) from None
                    if check_answers and context[start : start + len(answer_text)] != answer_text:
                        raise DataError(
                            f"{path}: example {qid}: answer {answer_text!r} is not in its context "
                            f"at answer_start {start}"
                        )
                    answers.append(Answer(text=answer_text, start=start))
                examples.append(
                    QAExample(id=qid, question=qa["question"], context=context, answers=answers, title=title)
                )
    if not examples:
        raise DataError(f"data file {path} has no questions")
    return examples


def _rows(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs of a JSONL, CSV or TSV file."""
    name = path.name.lower().removesuffix(".gz")
    text = _read_text(path)
    if name.endswith((".jsonl", ".json")):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: malformed JSON line: {e.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            yield number, row
        return
    if name.endswith((".csv", ".tsv")):
        delimiter = "\t" if name.endswith(".tsv") else ","
        reader = csv.reader(text.splitlines(), delimiter=delimiter)
        try:
            header = next(reader)
            for row in reader:
                number = reader.line_num
                if not row or not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}:{number}: malformed line: {len(row)} fields, header has {len(header)}"
                    )
                yield number, dict(zip(header, row, strict=True))
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None
        return
    raise DataError(f"{path}: unknown table format (expected .jsonl, .json, .csv or .tsv)")


def read_records(
    path: str | Path,
    record_type: type[R],
    columns: dict[str, str] | None = None,
    labels: Sequence[str] | None = None,
) -> list[R]:
    """Generic JSONL/CSV/TSV -> records of `record_type` (any dataclass in `plmkit.data.records`).

    `columns` maps a record field to the file's column name where they differ, e.g.
    `read_records("train.csv", LabeledText, {"text": "review", "label": "stars"})`. Missing optional
    fields take their defaults; a missing required column is an error naming the line. With `labels`,
    a `label` field outside the set is an error.
    """
    path = Path(path)
    columns = columns or {}
    fields = [f for f in dataclasses.fields(record_type) if f.init]
    records = []
    for number, row in _rows(path):
        values = {}
        for f in fields:
            column = columns.get(f.name, f.name)
            if column in row and row[column] is not None:
                value = row[column]
                values[f.name] = value if f.name in ("tokens", "tags", "answers") else str(value)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise DataError(
                    f"{path}:{number}: missing column {column!r} for {record_type.__name__}.{f.name}"
                )
        if "label" in values:
            _check_label(values["label"], labels, f"{path}:{number}")
        if "answers" in values:
            values["answers"] = [Answer(str(a["text"]), int(a["start"])) for a in values["answers"]]
        try:
            records.append(record_type(**values))
        except (TypeError, ValueError) as e:
            raise DataError(f"{path}:{number}: {e}") from None
    if not records:
        raise DataError(f"data file {path} has no records")
    return records
