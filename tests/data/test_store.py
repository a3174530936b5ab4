from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from shared_paths import require_data

from plmkit.data.batches import Batches
from plmkit.data.store import PackedBatches, TokenStore, build_store, store_dtype
from plmkit.data.tokenizer import CharTokenizer, Tokenizer
from plmkit.errors import DataError, TokenizerError


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    return Tokenizer.load(require_data("tokenizers", "gpt2"))


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory) -> Path:
    text = require_data("tiny_shakespeare", "input.txt").read_text(encoding="utf-8")[:40_000]
    path = tmp_path_factory.mktemp("text") / "shakespeare.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory, gpt2, shakespeare) -> TokenStore:
    out = tmp_path_factory.mktemp("store") / "s"
    return TokenStore(build_store([shakespeare], gpt2, out, progress=False))


def test_dtype_choice():
    assert store_dtype(50257) == np.uint16
    assert store_dtype(65536) == np.uint16  # ids 0..65535
    assert store_dtype(65537) == np.uint32


def test_separators_manifest_and_document_splits(tmp_path):
    tok = CharTokenizer(list("abcd \n"), special_tokens={"eos": "<eos>"})
    eos = tok.eos_id
    text = tmp_path / "docs.txt"
    text.write_text("ab c\nd\n\n\nba\n")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(json.dumps({"body": "dd"}) + "\n\n" + json.dumps({"body": "a"}) + "\n")
    out = build_store([text], tok, tmp_path / "blocks", progress=False)
    store = TokenStore(out)
    assert store.read(0, len(store)).tolist() == tok.encode("ab c\nd") + [eos] + tok.encode("ba") + [eos]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dtype"] == "uint16" and manifest["separator_id"] == eos
    assert manifest["num_tokens"] == 10 and manifest["num_documents"] == 2
    assert manifest["sources"] == [
        {"path": str(text.resolve()), "size_bytes": 12,
         "sha256": hashlib.sha256(text.read_bytes()).hexdigest(), "num_documents": 2, "num_tokens": 10}
    ]
    assert manifest["tokenizer_fingerprint"] == tok.fingerprint()
    assert store.tokenizer().itos == tok.itos
    lines = TokenStore(build_store([text], tok, tmp_path / "lines", split="line", progress=False))
    assert lines.read(0, len(lines)).tolist() == (
        tok.encode("ab c") + [eos] + tok.encode("d") + [eos] + tok.encode("ba") + [eos]
    )
    fields = TokenStore(build_store([jsonl], tok, tmp_path / "j", text_field="body", progress=False))
    assert fields.read(0, len(fields)).tolist() == [3, 3, eos, 0, eos]


def test_uint32_store_round_trips_large_ids(tmp_path):
    chars = [chr(c) for c in range(0x100, 0x100 + 70_000 + 2048) if not 0xD800 <= c <= 0xDFFF][:70_000]
    tok = CharTokenizer(chars, special_tokens={"eos": "<eos>"})
    text = "".join(chars[i] for i in (0, 1, 65_535, 65_536, 69_999))
    path = tmp_path / "wide.txt"
    path.write_text(text, encoding="utf-8")
    store = TokenStore(build_store([path], tok, tmp_path / "s", progress=False))
    assert store.dtype == np.uint32
    assert store.read(0, len(store)).tolist() == [0, 1, 65_535, 65_536, 69_999, 70_000]


def test_parallel_build_equals_serial_and_shards_read_across_boundaries(tmp_path, gpt2, shakespeare):
    one = build_store([shakespeare], gpt2, tmp_path / "one", progress=False)
    two = build_store([shakespeare], gpt2, tmp_path / "two", num_proc=2, shard_tokens=1000, chunk_docs=7,
                      progress=False)
    a, b = TokenStore(one), TokenStore(two)
    assert len(b.manifest["shards"]) == -(-len(a) // 1000) > 1
    assert np.array_equal(a.read(0, len(a)), b.read(0, len(b)))
    assert b.read(990, 25).tolist() == a.read(990, 25).tolist()  # spans shard_00000 and shard_00001
    docs = shakespeare.read_text(encoding="utf-8").split("\n\n")
    expected = [i for doc in docs if doc.strip() for i in gpt2.encode(doc.strip("\n")) + [gpt2.eos_id]]
    assert a.read(0, len(a)).tolist() == expected
    assert (a.read(0, len(a)) == gpt2.eos_id).sum() == a.manifest["num_documents"]


def test_packed_batches_windows_labels_and_epoch_coverage(store):
    T, B = 32, 4
    batches = PackedBatches(store, seq_len=T, batch_size=B, seed=3)
    assert isinstance(batches, Batches)
    ids = store.read(0, len(store))
    seen = []
    for _ in range(batches.batches_per_epoch):
        windows = batches.window_ids()
        batch = batches.next_batch()
        assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (B, T)
        assert batch["input_ids"].dtype == torch.long and bool(batch["attention_mask"].all())
        for row, w in enumerate(windows):
            window = torch.from_numpy(ids[w * T : w * T + T + 1])
            assert torch.equal(batch["input_ids"][row], window[:-1])
            assert torch.equal(batch["labels"][row], window[1:])
        seen += windows
    assert len(seen) == len(set(seen)) == batches.batches_per_epoch * B  # no window twice in an epoch
    assert batches.num_windows == (len(store) - 1) // T
    second = batches.window_ids()
    batches.next_batch()
    assert batches.epoch == 1 and second != seen[:B]  # a fresh permutation for the next epoch
    ordered = PackedBatches(store, seq_len=T, batch_size=B, seed=0, shuffle=False)
    assert ordered.window_ids() == [0, 1, 2, 3]


def test_resume_replays_exactly_the_same_batches(store):
    reference = PackedBatches(store, seq_len=64, batch_size=8, seed=11)
    total = reference.batches_per_epoch + 5  # crosses an epoch boundary
    expected = [reference.next_batch()["input_ids"] for _ in range(total)]
    first = PackedBatches(store, seq_len=64, batch_size=8, seed=11)
    for _ in range(7):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # as stored in trainer_state.json
    resumed = PackedBatches(TokenStore(store.path), seq_len=64, batch_size=8, seed=11)
    resumed.load_state_dict(state)
    for step in range(7, total):
        assert torch.equal(resumed.next_batch()["input_ids"], expected[step]), step
    other = PackedBatches(store, seq_len=32, batch_size=8, seed=11)
    with pytest.raises(DataError, match="sampler state key 'seq_len' is 64 but this run has 32"):
        other.load_state_dict(state)


def test_ranks_take_disjoint_slices_of_the_global_batch(store):
    single = PackedBatches(store, seq_len=16, batch_size=6, seed=5)
    ranks = [PackedBatches(store, seq_len=16, batch_size=2, seed=5, rank=r, world_size=3) for r in range(3)]
    for _ in range(single.batches_per_epoch + 2):
        whole = single.next_batch()
        parts = [r.next_batch() for r in ranks]
        for key in ("input_ids", "labels"):
            assert torch.equal(torch.cat([p[key] for p in parts]), whole[key])


def test_bad_inputs_give_one_line_errors_and_destroy_nothing(tmp_path, gpt2, shakespeare):
    keep = build_store([shakespeare], gpt2, tmp_path / "keep", progress=False)
    before = sorted(p.name for p in keep.iterdir())
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match=rf"^data file {empty} is empty \(no documents\)$"):
        build_store([shakespeare, empty], gpt2, keep, overwrite=True, progress=False)
    assert sorted(p.name for p in keep.iterdir()) == before and TokenStore(keep).num_tokens > 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # temp dir cleaned up
    with pytest.raises(DataError, match=f"^output directory {keep} already exists"):
        build_store([shakespeare], gpt2, keep, progress=False)
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match=f"^data file {missing} not found$"):
        build_store([missing], gpt2, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(DataError, match=rf"^{bad_json} line 2: invalid JSON"):
        build_store([bad_json], gpt2, tmp_path / "y", progress=False)
    odd = tmp_path / "odd.txt"
    odd.write_text("abc\n\nabz\n")
    with pytest.raises(TokenizerError, match=rf"^{odd}: character 'z' is not in the character vocabulary$"):
        build_store([odd], CharTokenizer.from_text("abc\n"), tmp_path / "z", num_proc=2, progress=False)
    assert not (tmp_path / "z").exists()
    # A truncated shard is detected on open, never read half-way.
    shard = keep / "shard_00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match=rf"^token store shard {shard} has \d+ bytes, expected \d+"):
        TokenStore(keep)
    with pytest.raises(DataError, match="is not a token store"):
        TokenStore(tmp_path)


def test_store_checks_batch_size_and_tokenizer(store, gpt2):
    with pytest.raises(DataError, match="fewer than one global batch of 4096"):
        PackedBatches(store, seq_len=1024, batch_size=4096, seed=0)
    store.check_tokenizer(gpt2)
    with pytest.raises(DataError, match="built with another tokenizer"):
        store.check_tokenizer(CharTokenizer.from_text("abc"))


def test_stale_reason_names_what_changed(tmp_path):
    tok = CharTokenizer(list("abcd \n"), special_tokens={"eos": "<eos>"})
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    one.write_text("ab\n\ncd\n")
    two.write_text("dc\n\nba\n")
    store = TokenStore(build_store([one], tok, tmp_path / "s", progress=False))
    assert store.stale_reason([one], tok) is None
    assert store.stale_reason([two], tok) == f"it was built from {one.resolve()}, not {two.resolve()}"
    assert "another tokenizer" in store.stale_reason([one], CharTokenizer(list("abcd \n")))
    assert store.stale_reason([one], tok, split="line") == "it was built with split='blank_line', not 'line'"
    one.write_text("ba\n\ndc\n")  # same size, other bytes
    assert store.stale_reason([one], tok) == f"{one} changed since the store was built (sha256 differs)"
    one.write_text("abc\n")
    assert store.stale_reason([one], tok) == f"{one} is 4 bytes now, 7 when the store was built"
