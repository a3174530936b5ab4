"""A token store: documents tokenized once into memory-mapped shards, served as packed causal-LM windows.

    build_store(["corpus.txt"], tokenizer, "data/corpus")         # shard_00000.bin ... + manifest.json
    store = TokenStore("data/corpus")
    batches = PackedBatches(store, seq_len=256, batch_size=8, seed=0)
    batch = batches.next_batch()   # input_ids, labels, attention_mask: (B, T)

Layout of a store directory: `shard_NNNNN.bin` (raw little-endian token ids, uint16 when every id fits,
else uint32), `manifest.json` (dtype, shards with token counts, the tokenizer fingerprint, the separator id
and the source files with their sizes and sha256), and `tokenizer/` (the tokenizer the ids came from).
`TokenStore.stale_reason` compares a store with the inputs and tokenizer a run asks for, so a store is
never silently reused for other text. Every document is followed by
the separator (the tokenizer's EOS), so packing many documents into one window still tells the model
where one ends, as GPT-2 and nanoGPT do with `<|endoftext|>`.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from plmkit.data.readers_text import Split, read_documents
from plmkit.data.tokenizer import CharTokenizer, Tokenizer, load_tokenizer
from plmkit.errors import DataError, PlmkitError
from plmkit.io import fsync_dir
from plmkit.progress import progress_bar

__all__ = ["build_store", "TokenStore", "PackedBatches", "store_dtype"]

FORMAT = "plmkit-token-store"
VERSION = 1
MANIFEST = "manifest.json"

AnyTokenizer = Tokenizer | CharTokenizer


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def store_dtype(vocab_size: int) -> np.dtype:
    """uint16 holds ids 0..65535, so any vocabulary of at most 65536 tokens; larger ones need uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


# ---- building ----------------------------------------------------------------------------------------

_worker_tokenizer: AnyTokenizer | None = None
_worker_options: tuple[int | None, bool] = (None, False)


def _init_worker(tokenizer: AnyTokenizer, separator: int | None, add_special_tokens: bool) -> None:
    global _worker_tokenizer, _worker_options
    _worker_tokenizer = tokenizer
    _worker_options = (separator, add_special_tokens)


def _tokenize_chunk(task: tuple[int, str, list[str]]) -> tuple[int, int, int, np.ndarray]:
    """(source, documents) -> (source, number of documents, characters, ids with a separator after each)."""
    source, path, docs = task
    assert _worker_tokenizer is not None
    separator, add_special_tokens = _worker_options
    try:
        encoded = _worker_tokenizer.encode_batch(docs, add_special_tokens=add_special_tokens)
    except PlmkitError as e:  # e.g. a character outside a CharTokenizer's vocabulary: say which file
        raise type(e)(f"{path}: {e}") from None
    if separator is not None:
        encoded = [ids + [separator] for ids in encoded]
    flat = np.fromiter((i for ids in encoded for i in ids), dtype=np.int64, count=sum(map(len, encoded)))
    return source, len(docs), sum(map(len, docs)), flat


def _chunks(inputs: Sequence[Path], text_field: str, split: Split, chunk_docs: int,
            chunk_chars: int) -> Iterator[tuple[int, str, list[str]]]:
    for source, path in enumerate(inputs):
        docs: list[str] = []
        chars = 0
        for doc in read_documents(path, text_field=text_field, split=split):
            docs.append(doc)
            chars += len(doc)
            if len(docs) >= chunk_docs or chars >= chunk_chars:
                yield source, str(path), docs
                docs, chars = [], 0
        if docs:
            yield source, str(path), docs


class _ShardWriter:
    def __init__(self, directory: Path, dtype: np.dtype, shard_tokens: int) -> None:
        self.directory = directory
        self.dtype = dtype
        self.shard_tokens = shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._file = None

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            if self._file is None or self.shards[-1]["num_tokens"] >= self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.shards[-1]["num_tokens"]
            part, ids = ids[:room], ids[room:]
            assert self._file is not None
            self._file.write(part.astype(self.dtype).tobytes())
            self.shards[-1]["num_tokens"] += len(part)

    def _open_next(self) -> None:
        self.close()
        name = f"shard_{len(self.shards):05d}.bin"
        self._file = open(self.directory / name, "wb")
        self.shards.append({"file": name, "num_tokens": 0})

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def build_store(
    inputs: Sequence[str | Path],
    tokenizer: AnyTokenizer,
    out_dir: str | Path,
    text_field: str = "text",
    split: Split = "blank_line",
    shard_tokens: int = 2**28,
    num_proc: int = 1,
    add_special_tokens: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    chunk_docs: int = 512,
) -> Path:
    """Tokenize text/JSONL files into a token store at `out_dir` and return its path.

    Documents are text blocks separated by blank lines (`split="blank_line"`), single lines (`"line"`) or
    whole files (`"file"`); JSONL records give theirs in `text_field`. Each document's ids are followed by
    the tokenizer's EOS id (no separator if the tokenizer has none). `num_proc` > 1 tokenizes chunks of
    documents in worker processes; the ids come out in input order whatever `num_proc` is. The store is
    written to a temporary directory and renamed into place, so an interrupted build leaves no store that
    looks complete, and an existing `out_dir` is only replaced when `overwrite` is set.
    """
    if not inputs:
        raise DataError("build_store got no input files")
    if shard_tokens < 1:
        raise DataError(f"shard_tokens must be >= 1, got {shard_tokens}")
    paths = [Path(p) for p in inputs]
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise DataError(f"output directory {out_dir} already exists (set overwrite to replace it)")
    for path in paths:
        if not path.is_file():
            problem = "not found" if not path.exists() else "is not a file"
            raise DataError(f"data file {path} {problem}")
    dtype = store_dtype(tokenizer.vocab_size)
    separator = tokenizer.eos_id
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    sources = [
        {"path": str(p.resolve()), "size_bytes": p.stat().st_size, "sha256": file_sha256(p),
         "num_documents": 0, "num_tokens": 0}
        for p in paths
    ]
    writer = _ShardWriter(tmp, dtype, shard_tokens)
    try:
        tasks = _chunks(paths, text_field, split, chunk_docs, chunk_chars=1 << 20)
        bar = progress_bar(sum(s["size_bytes"] for s in sources), f"tokenizing into {out_dir.name}",
                           unit="B", disable=not progress)
        if num_proc > 1:
            # fork keeps the tokenizer without pickling it per task; results arrive in input order.
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
            initargs = (tokenizer, separator, add_special_tokens)
            pool = ctx.Pool(num_proc, initializer=_init_worker, initargs=initargs)
            results: Iterator[tuple[int, int, int, np.ndarray]] = pool.imap(_tokenize_chunk, tasks)
        else:
            pool = None
            _init_worker(tokenizer, separator, add_special_tokens)
            results = map(_tokenize_chunk, tasks)
        try:
            total = 0
            for source, num_docs, num_chars, ids in results:
                if len(ids) and int(ids.max()) >= tokenizer.vocab_size:
                    top = int(ids.max())
                    raise DataError(f"tokenizer produced id {top}, outside its {tokenizer.vocab_size} ids")
                writer.write(ids)
                sources[source]["num_documents"] += num_docs
                sources[source]["num_tokens"] += len(ids)
                total += len(ids)
                # Characters approximate bytes (exact for ASCII); the bar is closed at 100% at the end.
                bar.update(min(num_chars, bar.total - bar.n))
                bar.set_postfix(tokens=total, refresh=False)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        bar.update(bar.total - bar.n)
        bar.close()
        writer.close()
        total = sum(s["num_tokens"] for s in sources)
        tokenizer.save(tmp / "tokenizer")
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "dtype": dtype.name,
            "vocab_size": tokenizer.vocab_size,
            "separator_id": separator,
            "tokenizer_fingerprint": tokenizer.fingerprint(),
            "add_special_tokens": add_special_tokens,
            "num_tokens": total,
            "num_documents": sum(s["num_documents"] for s in sources),
            "shards": writer.shards,
            "sources": sources,
            "text_field": text_field,
            "split": split,
        }
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
    except BaseException:
        writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)
    fsync_dir(out_dir.parent)
    return out_dir


# ---- reading -----------------------------------------------------------------------------------------


class TokenStore:
    """Read-only view of a token store: one logical array of ids over memory-mapped shards."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise DataError(f"{self.path} is not a token store: no {MANIFEST} (see `plmkit data prepare`)")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{manifest_path} is unreadable: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise DataError(f"{manifest_path} is not a {FORMAT} manifest")
        self.manifest = manifest
        self.dtype = np.dtype(manifest["dtype"])
        self.vocab_size: int = manifest["vocab_size"]
        self.separator_id: int | None = manifest["separator_id"]
        self.tokenizer_fingerprint: str = manifest["tokenizer_fingerprint"]
        self.shards: list[np.ndarray] = []
        for shard in manifest["shards"]:
            file = self.path / shard["file"]
            expected = shard["num_tokens"] * self.dtype.itemsize
            size = file.stat().st_size if file.is_file() else -1
            if size != expected:
                what = "is missing" if size < 0 else f"has {size} bytes, expected {expected}"
                raise DataError(f"token store shard {file} {what} (truncated or corrupt store)")
            if shard["num_tokens"]:
                self.shards.append(np.memmap(file, dtype=self.dtype, mode="r", shape=(shard["num_tokens"],)))
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])
        self.num_tokens = int(self.offsets[-1])
        if self.num_tokens != manifest["num_tokens"]:
            raise DataError(
                f"{manifest_path}: the shards hold {self.num_tokens} tokens, "
                f"the manifest says {manifest['num_tokens']}"
            )

    def __len__(self) -> int:
        return self.num_tokens

    def read(self, start: int, length: int) -> np.ndarray:
        """Ids [start, start + length) as int64, across shard boundaries."""
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(f"range [{start}, {start + length}) outside a store of {self.num_tokens} tokens")
        parts = []
        shard = int(np.searchsorted(self.offsets, start, side="right")) - 1
        while length > 0:
            local = start - int(self.offsets[shard])
            take = min(length, len(self.shards[shard]) - local)
            parts.append(np.asarray(self.shards[shard][local : local + take], dtype=np.int64))
            start, length, shard = start + take, length - take, shard + 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def tokenizer(self) -> AnyTokenizer:
        """The tokenizer saved with the store."""
        return load_tokenizer(self.path / "tokenizer")

    def stale_reason(
        self,
        inputs: Sequence[str | Path],
        tokenizer: AnyTokenizer | None = None,
        text_field: str = "text",
        split: str = "blank_line",
        add_special_tokens: bool = False,
    ) -> str | None:
        """Why this store does not hold `inputs` tokenized by `tokenizer` (None: it does).

        Inputs match when they are the same files (resolved paths, in order) with the same sizes and
        sha256; the tokenizer by fingerprint; the same document split, JSONL text field, special tokens.
        """
        recorded = self.manifest.get("sources", [])
        paths = [Path(p) for p in inputs]
        for path in paths:
            if not path.is_file():
                return f"input {path} {'is not a file' if path.exists() else 'not found'}"
        wanted = [str(p.resolve()) for p in paths]
        have = [s.get("path") for s in recorded]
        if wanted != have:
            return f"it was built from {', '.join(map(str, have)) or 'nothing'}, not {', '.join(wanted)}"
        for path, source in zip(paths, recorded):
            size = path.stat().st_size
            if size != source.get("size_bytes"):
                return f"{path} is {size} bytes now, {source.get('size_bytes')} when the store was built"
            if "sha256" not in source:
                return f"its manifest records no hash of {path} (built by an older plmkit)"
            if file_sha256(path) != source["sha256"]:
                return f"{path} changed since the store was built (sha256 differs)"
        if tokenizer is not None and tokenizer.fingerprint() != self.tokenizer_fingerprint:
            return "it was built with another tokenizer (fingerprints differ)"
        options = (("split", split), ("text_field", text_field), ("add_special_tokens", add_special_tokens))
        for key, value in options:
            if self.manifest.get(key) != value:
                return f"it was built with {key}={self.manifest.get(key)!r}, not {value!r}"
        return None

    def check_tokenizer(self, tokenizer: AnyTokenizer) -> None:
        """Raise if `tokenizer` is not the one the ids were made with."""
        if tokenizer.fingerprint() != self.tokenizer_fingerprint:
            raise DataError(f"token store {self.path} was built with another tokenizer (fingerprints differ)")


class PackedBatches:
    """Causal-LM windows of `seq_len + 1` consecutive ids, packed across documents; the Batches protocol.

    Window `i` is ids `[i * T, i * T + T + 1)` of the store (T = seq_len), so windows share one boundary
    token and every id is a target exactly once per epoch. Epoch `e` visits windows in
    `torch.randperm(num_windows)` from a generator seeded with `seed + e` (or in order with
    `shuffle=False`); global batch `b` is windows `[b * G, (b + 1) * G)` of that order with
    `G = batch_size * world_size`, and rank `r` takes `[r * batch_size, (r + 1) * batch_size)` of it, so
    the ranks together see exactly the single-process batch. The last partial global batch of an epoch is
    dropped. `(epoch, index)` is the whole state: restoring it replays the same batches.
    """

    def __init__(self, store: TokenStore, seq_len: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True) -> None:
        if seq_len < 1 or batch_size < 1:
            raise DataError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        self.store = store
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.num_windows = max(0, (store.num_tokens - 1) // seq_len)
        global_size = batch_size * world_size
        self.batches_per_epoch = self.num_windows // global_size
        if self.batches_per_epoch == 0:
            raise DataError(
                f"token store {store.path} has {store.num_tokens} tokens: {self.num_windows} windows of "
                f"seq_len {seq_len}, fewer than one global batch of {global_size}"
            )
        self.epoch = 0
        self.index = 0
        self._order: Tensor | None = None
        self._order_epoch = -1

    def _epoch_order(self) -> Tensor:
        if self._order_epoch != self.epoch:
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed + self.epoch)
                self._order = torch.randperm(self.num_windows, generator=generator)
            else:
                self._order = torch.arange(self.num_windows)
            self._order_epoch = self.epoch
        assert self._order is not None
        return self._order

    def window_ids(self) -> list[int]:
        """The window indices the next call to `next_batch` returns on this rank (without advancing)."""
        at_end = self.index >= self.batches_per_epoch
        epoch, index = (self.epoch + 1, 0) if at_end else (self.epoch, self.index)
        saved = self.epoch
        self.epoch = epoch
        order = self._epoch_order()
        self.epoch = saved
        start = index * self.batch_size * self.world_size + self.rank * self.batch_size
        return order[start : start + self.batch_size].tolist()

    def next_batch(self) -> dict[str, Tensor]:
        windows = self.window_ids()
        if self.index >= self.batches_per_epoch:
            self.epoch += 1
            self.index = 0
        self.index += 1
        T = self.seq_len
        rows = np.stack([self.store.read(w * T, T + 1) for w in windows])  # (B, T + 1)
        tokens = torch.from_numpy(rows)
        return {
            "input_ids": tokens[:, :-1].contiguous(),  # (B, T)
            "labels": tokens[:, 1:].contiguous(),  # (B, T)
            "attention_mask": torch.ones(len(windows), T, dtype=torch.long),  # (B, T)
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "index": self.index,
            "seed": self.seed,
            "num_tokens": self.store.num_tokens,
            "seq_len": self.seq_len,
            "global_batch_size": self.batch_size * self.world_size,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {
            "seed": self.seed,
            "num_tokens": self.store.num_tokens,
            "seq_len": self.seq_len,
            "global_batch_size": self.batch_size * self.world_size,
            "shuffle": self.shuffle,
        }
        for key, value in expected.items():
            if state.get(key) != value:
                raise DataError(
                    f"sampler state key {key!r} is {state.get(key)!r} but this run has {value!r}; "
                    "resume with the same token store, seq_len, seed and global batch size"
                )
        self.epoch = int(state["epoch"])
        self.index = int(state["index"])
