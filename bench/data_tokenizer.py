"""Tokenizer speed against transformers' fast tokenizers, on Tiny Shakespeare (1.1 MB).

- encode: the GPT-2 byte-level BPE built from `vocab.json` + `merges.txt` by `plmkit.data.tokenizer`,
  against `GPT2TokenizerFast` built from the same files; the 32,777 non-empty lines as one batch, and
  the whole text as one string. Both sides must produce identical ids (checked).
- train: a byte-level BPE with 8,000 tokens, `train_tokenizer` against transformers'
  `train_new_from_iterator` on the GPT-2 fast tokenizer.

Both wrap the same Rust library, so a ratio near 1.0 means plmkit adds no overhead. Runs alternate
between the two sides and the median of `REPEATS` is reported.

    python bench/run.py tokenizer_encode tokenizer_train
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.result import BenchResult

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GPT2 = DATA / "tokenizers" / "gpt2"
SHAKESPEARE = DATA / "tiny_shakespeare" / "input.txt"
REPEATS = 5


def _alternate(ours: Callable[[], object], reference: Callable[[], object],
               repeats: int) -> tuple[float, float]:
    """Median seconds of each, running them in turn after one warm-up each."""
    ours()
    reference()
    times_ours, times_ref = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        ours()
        times_ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        reference()
        times_ref.append(time.perf_counter() - start)
    return statistics.median(times_ours), statistics.median(times_ref)


def encode_throughput() -> list[BenchResult]:
    from transformers import GPT2TokenizerFast

    from plmkit.data.tokenizer import Tokenizer

    text = SHAKESPEARE.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    ours = Tokenizer.load(GPT2)
    reference = GPT2TokenizerFast.from_pretrained(GPT2)

    ids_ours = ours.encode_batch(lines, add_special_tokens=False)
    ids_ref = reference(lines, add_special_tokens=False)["input_ids"]
    if ids_ours != ids_ref:
        raise AssertionError("plmkit and transformers GPT-2 tokenizers disagree on Tiny Shakespeare lines")
    whole_ours = ours.encode(text, add_special_tokens=False)
    if whole_ours != reference(text, add_special_tokens=False)["input_ids"]:
        raise AssertionError("plmkit and transformers GPT-2 tokenizers disagree on the whole text")
    batch_tokens = sum(map(len, ids_ours))

    t_ours, t_ref = _alternate(
        lambda: ours.encode_batch(lines, add_special_tokens=False),
        lambda: reference(lines, add_special_tokens=False)["input_ids"],
        REPEATS,
    )
    t_ours_one, t_ref_one = _alternate(
        lambda: ours.encode(text, add_special_tokens=False),
        lambda: reference(text, add_special_tokens=False)["input_ids"],
        REPEATS,
    )
    return [
        BenchResult("tokenizer_encode", f"batch of {len(lines)} lines", batch_tokens / t_ours,
                    batch_tokens / t_ref, "tokens/s", True, "GPT-2 BPE, ids identical"),
        BenchResult("tokenizer_encode", "one 1.1 MB string", len(whole_ours) / t_ours_one,
                    len(whole_ours) / t_ref_one, "tokens/s", True, "GPT-2 BPE, ids identical"),
    ]


def train_throughput() -> list[BenchResult]:
    from transformers import GPT2TokenizerFast

    from plmkit.data.tokenizer import train_tokenizer

    text = SHAKESPEARE.read_text(encoding="utf-8")
    blocks = [b for b in text.split("\n\n") if b.strip()]
    base = GPT2TokenizerFast.from_pretrained(GPT2)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "input.txt"
        corpus.write_text(text, encoding="utf-8")
        sizes: dict[str, int] = {}

        def ours() -> None:
            sizes["ours"] = train_tokenizer([corpus], kind="bpe", vocab_size=8000, min_frequency=2).vocab_size

        def reference() -> None:
            trained = base.train_new_from_iterator(iter(blocks), vocab_size=8000, min_frequency=2)
            sizes["ref"] = len(trained)

        t_ours, t_ref = _alternate(ours, reference, 3)
    mb = len(text.encode("utf-8")) / 1e6
    return [
        BenchResult("tokenizer_train", "byte-level BPE, 8000 tokens", mb / t_ours, mb / t_ref, "MB/s", True,
                    f"vocab {sizes['ours']} vs {sizes['ref']}"),
    ]
