"""Write world tasks in the file formats plmkit's readers (and Hugging Face's) take.

sentiment -> SST-2-style TSV (`sentence\\tlabel` with a header); tagging -> CoNLL (`token tag` lines,
blank line between sentences); qa -> SQuAD v1.1 JSON; every task -> JSONL as well.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from plmkit.io import write_text
from plmkit.world.core import World
from plmkit.world.tasks import GENERATORS, SPLITS, make_task


def to_jsonl(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def to_tsv(records: Iterable[dict[str, Any]]) -> str:
    lines = ["sentence\tlabel"]
    lines += [f"{r['sentence']}\t{r['label']}" for r in records]
    return "\n".join(lines) + "\n"


def to_conll(records: Iterable[dict[str, Any]]) -> str:
    blocks = ["\n".join(f"{tok} {tag}" for tok, tag in zip(r["tokens"], r["tags"])) for r in records]
    return "\n\n".join(blocks) + "\n"


def to_squad(records: Iterable[dict[str, Any]], title: str = "world") -> str:
    paragraphs = [
        {
            "context": r["context"],
            "qas": [
                {
                    "id": r["id"],
                    "question": r["question"],
                    "answers": [
                        {"text": t, "answer_start": s}
                        for t, s in zip(r["answers"]["text"], r["answers"]["answer_start"])
                    ],
                }
            ],
        }
        for r in records
    ]
    return json.dumps(
        {"version": "1.1", "data": [{"title": title, "paragraphs": paragraphs}]}, ensure_ascii=False
    )


def write_world(
    out: str | Path, seed: int = 0, tasks: Sequence[str] = tuple(GENERATORS), corpus_paragraphs: int = 5000
) -> dict[str, list[str]]:
    """Write the corpus and every task split under `out`; returns {task: [file paths]}."""
    out = Path(out)
    world = World(seed)
    written: dict[str, list[str]] = {}
    corpus = out / "corpus.txt"
    # Paragraphs separated by blank lines: the tokenizer trainer's "blank_line" split reads them back.
    write_text(corpus, "\n\n".join(world.corpus(corpus_paragraphs)) + "\n")
    written["corpus"] = [str(corpus)]
    for task in tasks:
        files = []
        for split in SPLITS:
            records = make_task(world, task, split)
            stem = out / task / split
            write_text(stem.with_suffix(".jsonl"), to_jsonl(records))
            files.append(str(stem.with_suffix(".jsonl")))
            extra = {
                "sentiment": (".tsv", to_tsv),
                "tagging": (".conll", to_conll),
                "qa": (".json", to_squad),
            }.get(task)
            if extra:
                write_text(stem.with_suffix(extra[0]), extra[1](records))
                files.append(str(stem.with_suffix(extra[0])))
        written[task] = files
    return written
