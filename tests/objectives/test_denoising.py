"""BART denoising: mask ratio, Poisson span lengths with zero-length insertions, permutation, deletion."""

from __future__ import annotations

import math

import torch

from plmkit.objectives.denoising import (
    DenoisingConfig,
    delete_tokens,
    denoising_batch,
    infill_spans,
    permute_sentences,
)

MASK = 3


def test_mask_ratio_and_poisson_span_lengths() -> None:
    g = torch.Generator().manual_seed(0)
    lengths: list[int] = []
    masked, total = 0, 0
    for _ in range(400):
        tokens = torch.randint(10, 1000, (200,), generator=g)
        out = infill_spans(tokens, MASK, g)
        assert sum(out.span_lengths) == 60  # exactly 30% of the tokens are hidden
        # Each span became one mask token: the output shrinks by (hidden - number of spans).
        assert out.tokens.shape[0] == 200 - 60 + len(out.span_lengths)
        assert int((out.tokens == MASK).sum()) == len(out.span_lengths)
        lengths.extend(out.span_lengths[:-1])  # the last span is cut to fit, so it is not Poisson
        masked += sum(out.span_lengths)
        total += 200
    assert masked / total == 0.3
    counts = torch.bincount(torch.tensor(lengths)).double() / len(lengths)
    for k in range(6):  # Poisson(3) pmf within sampling noise
        pmf = math.exp(-3) * 3**k / math.factorial(k)
        assert abs(float(counts[k]) - pmf) < 0.015, (k, float(counts[k]), pmf)
    assert abs(sum(lengths) / len(lengths) - 3.0) < 0.1
    assert lengths.count(0) > 0  # zero-length spans: inserted masks


def test_unmasked_tokens_keep_their_order() -> None:
    g = torch.Generator().manual_seed(1)
    tokens = torch.arange(10, 110)
    out = infill_spans(tokens, MASK, g).tokens
    kept = out[out != MASK]
    assert torch.all(kept[1:] > kept[:-1]) and kept.shape[0] == 70


def test_sentence_permutation_keeps_sentences_intact() -> None:
    dot = 5
    tokens = torch.tensor([10, 11, dot, 20, 21, 22, dot, 30, dot, 40, 41])
    seen = set()
    for seed in range(20):
        out = permute_sentences(tokens, [dot], torch.Generator().manual_seed(seed))
        assert sorted(out.tolist()) == sorted(tokens.tolist())
        text = " ".join(map(str, out.tolist()))
        for sentence in ("10 11 5", "20 21 22 5", "30 5", "40 41"):
            assert sentence in text
        seen.add(text)
    assert len(seen) > 5


def test_token_deletion_ratio() -> None:
    out = delete_tokens(torch.arange(100), 0.1, torch.Generator().manual_seed(0))
    assert out.shape[0] == 90 and torch.all(out[1:] > out[:-1])


def test_batch_targets_are_the_original_windows() -> None:
    windows = torch.randint(10, 100, (3, 40), generator=torch.Generator().manual_seed(0))
    cfg = DenoisingConfig(mask_id=MASK, sentence_end_ids=(11,), delete_ratio=0.05)
    batch = denoising_batch(windows, cfg, torch.Generator().manual_seed(2), pad_id=1)
    assert torch.equal(batch["labels"], windows)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert bool((batch["input_ids"] == MASK).any())
    again = denoising_batch(windows, cfg, torch.Generator().manual_seed(2), pad_id=1)
    assert torch.equal(batch["input_ids"], again["input_ids"])
