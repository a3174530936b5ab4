"""ShuffledBatches: seeded epochs, exact resume from its state, disjoint rank slices that add up to the
single-process batch, and errors that name the problem."""

from __future__ import annotations

import pytest
import torch

from plmkit.data.batches import Batches, ShuffledBatches
from plmkit.errors import DataError


def _ids(examples: list[int]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor(examples)}


def _take(batches: ShuffledBatches, n: int) -> list[list[int]]:
    return [batches.next_batch()["input_ids"].tolist() for _ in range(n)]


def test_epochs_are_seeded_permutations_without_repeats():
    batches = ShuffledBatches(list(range(10)), _ids, 3, seed=7)
    assert isinstance(batches, Batches)
    epoch0, epoch1 = _take(batches, 3), _take(batches, 3)
    flat0 = [i for b in epoch0 for i in b]
    assert len(set(flat0)) == 9  # drop_last: 3 batches of 3, no example twice
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(7))[:9].tolist()
    assert flat0 == expected
    assert epoch1 != epoch0 and batches.state_dict()["epoch"] == 1
    assert _take(ShuffledBatches(list(range(10)), _ids, 3, seed=7), 3) == epoch0


def test_resume_from_state_sees_the_same_batches():
    uninterrupted = ShuffledBatches(list(range(10)), _ids, 3, seed=7)
    stream = _take(uninterrupted, 8)
    first = ShuffledBatches(list(range(10)), _ids, 3, seed=7)
    head = _take(first, 4)  # crosses into the second epoch
    resumed = ShuffledBatches(list(range(10)), _ids, 3, seed=7)
    resumed.load_state_dict(first.state_dict())
    assert head + _take(resumed, 4) == stream


def test_ranks_take_disjoint_contiguous_parts_of_the_global_batch():
    single = _take(ShuffledBatches(list(range(20)), _ids, 8, seed=3), 4)
    ranks = [
        _take(ShuffledBatches(list(range(20)), _ids, 4, seed=3, rank=r, world_size=2), 4) for r in range(2)
    ]
    for step in range(4):
        assert ranks[0][step] + ranks[1][step] == single[step]


def test_short_last_batch_kept_without_drop_last():
    batches = ShuffledBatches(list(range(5)), _ids, 2, seed=0, drop_last=False)
    sizes = [len(b) for b in _take(batches, 3)]
    assert sizes == [2, 2, 1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(examples=[], batch_size=2), "ShuffledBatches got no examples"),
        (
            dict(examples=list(range(3)), batch_size=2, world_size=2),
            r"3 examples cannot fill one global batch of 4 \(batch_size 2 x world_size 2\)",
        ),
        (dict(examples=list(range(8)), batch_size=2, rank=2, world_size=2), "rank 2 is outside world_size 2"),
        (dict(examples=list(range(8)), batch_size=0), "batch_size must be >= 1, got 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(DataError, match=message):
        ShuffledBatches(collate_fn=_ids, seed=0, **kwargs)


def test_state_from_other_data_is_refused():
    state = ShuffledBatches(list(range(10)), _ids, 3, seed=7).state_dict()
    other = ShuffledBatches(list(range(12)), _ids, 3, seed=7)
    with pytest.raises(DataError, match="sampler state key 'num_examples' is 10 but this run has 12"):
        other.load_state_dict(state)
    assert other.state_dict()["index"] == 0
