"""Plain text and JSONL documents, read as a stream of strings for tokenizer training and the token store.

Text files hold one document per blank-line-separated block (`split="blank_line"`), per line
(`split="line"`) or the whole file (`split="file"`). JSONL files (`.jsonl`, `.json`) hold one record per
line with the document in `text_field`. Files ending in `.gz` are read through gzip.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from plmkit.errors import DataError

Split = Literal["blank_line", "line", "file"]


def is_jsonl(path: str | Path) -> bool:
    name = Path(path).name.lower().removesuffix(".gz")
    return name.endswith((".jsonl", ".json"))


def _open_lines(path: Path) -> Iterator[str]:
    try:
        if path.name.endswith(".gz"):
            f = gzip.open(path, "rt", encoding="utf-8")
        else:
            f = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"data file {path} not found") from None
    except OSError as e:
        raise DataError(f"data file {path} cannot be read: {e.strerror or e}") from None
    try:
        with f:
            yield from f
    except UnicodeDecodeError as e:
        raise DataError(f"data file {path} is not UTF-8 text: {e.reason} at byte {e.start}") from None
    except (OSError, EOFError) as e:
        raise DataError(f"data file {path} cannot be read: {e}") from None


def read_documents(path: str | Path, text_field: str = "text", split: Split = "blank_line") -> Iterator[str]:
    """Yield the non-empty documents of one file; raise DataError naming the file (and line) on bad input.

    A file with no document at all is an error too: an empty input is almost always a wrong path or a
    failed download, and silently training on nothing hides it.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"data file {path} is a directory")
    count = 0
    if is_jsonl(path):
        for lineno, line in enumerate(_open_lines(path), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {lineno}: invalid JSON: {e.msg}") from None
            if not isinstance(record, dict) or text_field not in record:
                raise DataError(f"{path} line {lineno}: record has no field '{text_field}'")
            text = record[text_field]
            if not isinstance(text, str):
                raise DataError(f"{path} line {lineno}: field '{text_field}' is not a string")
            if text.strip():
                count += 1
                yield text
    elif split == "line":
        for line in _open_lines(path):
            text = line.rstrip("\n")
            if text.strip():
                count += 1
                yield text
    elif split == "blank_line":
        block: list[str] = []
        for line in _open_lines(path):
            if line.strip():
                block.append(line)
            elif block:
                count += 1
                yield "".join(block).rstrip("\n")
                block = []
        if block:
            count += 1
            yield "".join(block).rstrip("\n")
    elif split == "file":
        text = "".join(_open_lines(path))
        if text.strip():
            count += 1
            yield text
    else:
        raise DataError(f"unknown document split '{split}' (choose blank_line, line or file)")
    if count == 0:
        raise DataError(f"data file {path} is empty (no documents)")
