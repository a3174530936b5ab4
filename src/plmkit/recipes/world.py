"""Write the synthetic world's corpus and task files (TSV, CoNLL, SQuAD JSON, JSONL) to a directory.

    plmkit world --out world/ --seed 0
    plmkit world --out world/ --tasks sentiment,tagging

Writes `corpus.txt` (paragraphs separated by blank lines) and `<task>/{train,dev,test}.jsonl`, plus
`sentiment/*.tsv` (SST-2 style), `tagging/*.conll` and `qa/*.json` (SQuAD v1.1). The same seed always
writes the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from plmkit.errors import ConfigError
from plmkit.world import GENERATORS, write_world


@dataclass
class Config:
    out: str = field(default="", metadata={"help": "directory to write the files into (required)"})
    seed: int = field(default=0, metadata={"help": "world seed: same seed, same files"})
    tasks: list[str] = field(
        default_factory=lambda: list(GENERATORS),
        metadata={"help": "comma-separated tasks to write: " + ",".join(GENERATORS)},
    )
    corpus_paragraphs: int = field(default=5000, metadata={"help": "paragraphs of unlabelled text"})

    def __post_init__(self) -> None:
        if not self.out:
            raise ConfigError("--out is required: the directory to write the world into")
        unknown = [t for t in self.tasks if t not in GENERATORS]
        if unknown:
            raise ConfigError(f"--tasks: unknown task '{unknown[0]}' (choose from {', '.join(GENERATORS)})")
        if self.corpus_paragraphs < 1:
            raise ConfigError("--corpus_paragraphs must be >= 1")


def run(cfg: Config) -> dict:
    written = write_world(cfg.out, seed=cfg.seed, tasks=cfg.tasks, corpus_paragraphs=cfg.corpus_paragraphs)
    return {"out": cfg.out, "files": sum(len(v) for v in written.values())}
