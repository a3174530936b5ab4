"""RandomWindows: nanoGPT-style causal-LM windows at random offsets of a token stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plmkit.data.batches import Batches, RandomWindows
from plmkit.errors import DataError


class Arange:
    """A token stream whose id at position i is i, so a window's ids name its own offsets."""

    def __init__(self, num_tokens: int) -> None:
        self.num_tokens = num_tokens

    def read(self, start: int, length: int) -> np.ndarray:
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(f"[{start}, {start + length}) outside {self.num_tokens}")
        return np.arange(start, start + length, dtype=np.int64)


def batches(n: int, source: RandomWindows) -> list[dict[str, torch.Tensor]]:
    return [source.next_batch() for _ in range(n)]


def test_windows_are_in_bounds_and_targets_are_inputs_shifted_by_one() -> None:
    T, N = 8, 40
    source = RandomWindows(Arange(N), seq_len=T, batch_size=16, seed=0)
    assert isinstance(source, Batches)
    firsts = set()
    for batch in batches(50, source):
        ids, labels = batch["input_ids"], batch["labels"]
        assert ids.shape == labels.shape == batch["attention_mask"].shape == (16, T)
        assert ids.dtype == torch.long and bool(batch["attention_mask"].all())
        # consecutive ids: each row is one contiguous window, and its labels are the next ids
        assert torch.equal(ids[:, 1:] - ids[:, :-1], torch.ones(16, T - 1, dtype=torch.long))
        assert torch.equal(labels, ids + 1)
        assert int(ids.min()) >= 0 and int(labels.max()) <= N - 1
        firsts.update(ids[:, 0].tolist())
    # every start in [0, N - T - 1] is reachable, the last one included
    assert firsts == set(range(N - T))


def test_same_seed_same_windows_other_seed_other_windows() -> None:
    a = batches(5, RandomWindows(Arange(10_000), seq_len=16, batch_size=4, seed=7))
    b = batches(5, RandomWindows(Arange(10_000), seq_len=16, batch_size=4, seed=7))
    c = batches(5, RandomWindows(Arange(10_000), seq_len=16, batch_size=4, seed=8))
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    assert not all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, c))
    # batches differ from step to step (fresh draws, not one repeated batch)
    assert not torch.equal(a[0]["input_ids"], a[1]["input_ids"])


def test_resume_replays_the_same_windows_across_a_block_boundary() -> None:
    stream = Arange(5_000)
    reference = RandomWindows(stream, seq_len=8, batch_size=3, seed=2)
    expected = batches(RandomWindows.BLOCK + 3, reference)
    first = RandomWindows(stream, seq_len=8, batch_size=3, seed=2)
    batches(RandomWindows.BLOCK - 2, first)
    resumed = RandomWindows(stream, seq_len=8, batch_size=3, seed=2)
    resumed.load_state_dict(first.state_dict())
    for want, got in zip(expected[RandomWindows.BLOCK - 2 :], batches(5, resumed)):
        assert torch.equal(want["input_ids"], got["input_ids"])
    with pytest.raises(DataError, match="seq_len"):
        RandomWindows(stream, seq_len=16, batch_size=3, seed=2).load_state_dict(first.state_dict())


def test_ranks_split_the_global_batch() -> None:
    stream = Arange(1_000)
    single = batches(3, RandomWindows(stream, seq_len=4, batch_size=6, seed=5))
    ranks = [batches(3, RandomWindows(stream, seq_len=4, batch_size=2, seed=5, rank=r, world_size=3))
             for r in range(3)]
    for step in range(3):
        joined = torch.cat([ranks[r][step]["input_ids"] for r in range(3)])
        assert torch.equal(joined, single[step]["input_ids"])


def test_bad_inputs_are_one_line_errors() -> None:
    with pytest.raises(DataError, match="shorter than one window"):
        RandomWindows(Arange(8), seq_len=8, batch_size=1, seed=0)
    with pytest.raises(DataError, match="batch_size must be >= 1"):
        RandomWindows(Arange(100), seq_len=8, batch_size=0, seed=0)
    with pytest.raises(DataError, match="outside world_size"):
        RandomWindows(Arange(100), seq_len=8, batch_size=1, seed=0, rank=2, world_size=2)
    # the shortest valid stream has exactly one window
    only = RandomWindows(Arange(9), seq_len=8, batch_size=2, seed=0).next_batch()
    assert only["input_ids"].tolist() == [list(range(8))] * 2
