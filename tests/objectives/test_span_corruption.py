"""T5 span corruption: context-filling lengths, density and span statistics, sentinels, reconstruction."""

from __future__ import annotations

import torch

from plmkit.objectives.span_corruption import (
    corrupt_spans,
    random_spans_noise_mask,
    reconstruct,
    span_corruption_batch,
    span_corruption_lengths,
)

V, EOS = 32100, 1
SENTINEL = V - 1


def test_lengths_match_t5_random_spans_helper() -> None:
    # Values of T5's random_spans_helper (t5/data/preprocessors.py) for the paper's setting.
    assert span_corruption_lengths(512) == (568, 114)
    assert span_corruption_lengths(128) == (141, 29)


def test_packed_windows_fill_the_context_exactly() -> None:
    window, target_len = span_corruption_lengths(512)
    windows = torch.randint(2, 32000, (4, window), generator=torch.Generator().manual_seed(0))
    batch = span_corruption_batch(windows, torch.Generator().manual_seed(1), SENTINEL, EOS)
    assert batch["input_ids"].shape == (4, 512)
    assert batch["labels"].shape == (4, target_len)


def test_noise_density_and_mean_span_length_over_many_examples() -> None:
    g = torch.Generator().manual_seed(0)
    noise, spans, total = 0, 0, 0
    for length in (100, 177, 300, 568) * 50:
        mask = random_spans_noise_mask(length, g)
        starts = mask & ~torch.nn.functional.pad(mask[:-1], (1, 0), value=False)
        assert not bool(mask[0])  # T5 starts with a non-noise span
        noise += int(mask.sum())
        spans += int(starts.sum())
        total += length
    assert abs(noise / total - 0.15) < 0.005
    assert abs(noise / spans - 3.0) < 0.1


def test_span_lengths_vary() -> None:
    mask = random_spans_noise_mask(568, torch.Generator().manual_seed(3))
    runs = torch.unique_consecutive(mask, return_counts=True)
    noise_runs = runs[1][runs[0]].tolist()
    assert len(set(noise_runs)) > 1 and sum(noise_runs) == 85


def test_golden_example_and_sentinels_in_order() -> None:
    tokens = torch.arange(10, 20)
    mask = torch.tensor([0, 0, 1, 1, 0, 0, 0, 1, 0, 0], dtype=torch.bool)
    inputs, targets = corrupt_spans(tokens, mask, SENTINEL, EOS)
    assert inputs.tolist() == [10, 11, SENTINEL, 14, 15, 16, SENTINEL - 1, 18, 19, EOS]
    # As in the paper's example, a trailing kept span leaves a final sentinel in the targets.
    assert targets.tolist() == [SENTINEL, 12, 13, SENTINEL - 1, 17, SENTINEL - 2, EOS]


def test_interleaving_inputs_and_targets_reconstructs_the_original() -> None:
    g = torch.Generator().manual_seed(5)
    for _ in range(50):
        tokens = torch.randint(2, 32000, (int(torch.randint(10, 300, (1,), generator=g)),), generator=g)
        inputs, targets = corrupt_spans(tokens, random_spans_noise_mask(tokens.shape[0], g), SENTINEL, EOS)
        sentinels = [t for t in inputs.tolist() if t > 32000]
        assert sentinels == list(range(SENTINEL, SENTINEL - len(sentinels), -1))
        assert [t for t in targets.tolist() if t > 32000] == sentinels
        assert reconstruct(inputs, targets, SENTINEL, EOS) == tokens.tolist()


def test_same_generator_seed_same_corruption() -> None:
    windows = torch.randint(2, 100, (2, 50), generator=torch.Generator().manual_seed(0))
    a = span_corruption_batch(windows, torch.Generator().manual_seed(7), SENTINEL, EOS)
    b = span_corruption_batch(windows, torch.Generator().manual_seed(7), SENTINEL, EOS)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
