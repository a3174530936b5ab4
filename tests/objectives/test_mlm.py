"""MLM masking statistics, invariants and golden values; the MLM loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plmkit.errors import ConfigError
from plmkit.objectives.mlm import (
    MaskingConfig,
    continuation_table,
    mask_static,
    mask_tokens,
    mlm_loss,
    wordpiece_word_ids,
)

PAD, CLS, SEP, MASK = 0, 1, 2, 3
SPECIAL = (PAD, CLS, SEP, MASK)
V = 1000


def batch(b: int = 600, t: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] tokens [SEP] with random lengths and right padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (b, t), generator=g)
    lengths = torch.randint(t // 4, t + 1, (b,), generator=g)
    positions = torch.arange(t)[None]
    mask = (positions < lengths[:, None]).long()
    ids[:, 0] = CLS
    ids[torch.arange(b), lengths - 1] = SEP
    ids[mask == 0] = PAD
    return ids, mask


def outcome(ids, masked, labels):
    chosen = labels != -100
    as_mask = chosen & (masked == MASK)
    as_random = chosen & (masked != MASK) & (masked != ids)
    unchanged = chosen & (masked == ids)
    return chosen, as_mask, as_random, unchanged


@pytest.mark.parametrize("exact", [False, True])
def test_selection_and_80_10_10_statistics(exact):
    ids, attn = batch()
    cfg = MaskingConfig(mask_id=MASK, vocab_size=V, special_ids=SPECIAL, exact_count=exact)
    masked, labels = mask_tokens(ids, cfg, torch.Generator().manual_seed(1), attention_mask=attn)
    chosen, as_mask, as_random, unchanged = outcome(ids, masked, labels)
    eligible = (attn == 1) & ~torch.isin(ids, torch.tensor(SPECIAL))
    assert not (chosen & ~eligible).any()  # special tokens and padding are never chosen
    assert abs(chosen.sum() / eligible.sum() - 0.15) < 0.005
    n = chosen.sum()
    assert abs(as_mask.sum() / n - 0.8) < 0.015
    assert abs(as_random.sum() / n - 0.1) < 0.015
    assert abs(unchanged.sum() / n - 0.1) < 0.015
    assert (labels[chosen] == ids[chosen]).all()
    assert (masked[~chosen] == ids[~chosen]).all()
    assert not torch.isin(masked[as_random], torch.tensor(SPECIAL)).any()  # random ids are never special
    if exact:  # exactly round(0.15 * n) targets in every sequence
        per_row = torch.round(eligible.sum(-1).double() * 0.15).long()
        assert torch.equal(chosen.sum(-1), per_row)


def test_whole_word_masking_keeps_words_together():
    ids, attn = batch(b=400)
    g = torch.Generator().manual_seed(5)
    # Words of 1-3 pieces over the eligible tokens.
    eligible = (attn == 1) & ~torch.isin(ids, torch.tensor(SPECIAL))
    starts = eligible & (torch.rand(ids.shape, generator=g) < 0.5)
    starts[:, 1] = True
    word_ids = torch.where(eligible, starts.long().cumsum(-1) - 1, torch.full_like(ids, -1))
    index = word_ids.clamp(min=0)

    def per_word(flags: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(ids).scatter_add_(1, index, (flags & eligible).long())

    for exact in (False, True):
        cfg = MaskingConfig(mask_id=MASK, vocab_size=V, special_ids=SPECIAL, whole_word=True,
                            exact_count=exact)
        masked, labels = mask_tokens(ids, cfg, torch.Generator().manual_seed(2), attention_mask=attn,
                                     word_ids=word_ids)
        chosen, as_mask, _, _ = outcome(ids, masked, labels)
        assert abs(chosen.sum() / eligible.sum() - 0.15) < 0.01
        assert abs(as_mask.sum() / chosen.sum() - 0.8) < 0.03
        size, n_chosen, n_masked = per_word(eligible), per_word(chosen), per_word(as_mask)
        assert ((n_chosen == 0) | (n_chosen == size)).all()  # every piece of a chosen word is a target
        assert ((n_masked == 0) | (n_masked == size)).all()  # one 80/10/10 decision per word
        assert (size[n_chosen > 0] > 1).any()  # multi-piece words were chosen
        if exact:
            assert (chosen.sum(-1) <= torch.round(eligible.sum(-1).double() * 0.15)).all()


def test_wordpiece_words_from_continuations():
    vocab = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "play", "##ing", "##ed", "the", "game"]
    table = continuation_table(vocab, len(vocab))
    ids = torch.tensor([[1, 7, 4, 5, 8, 4, 6, 2, 0]])
    eligible = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0, 0]]).bool()
    assert wordpiece_word_ids(ids, table, eligible).tolist() == [[-1, 0, 1, 1, 2, 3, 3, -1, -1]]
    cfg = MaskingConfig(mask_id=MASK, vocab_size=len(vocab), special_ids=(0, 1, 2, 3), whole_word=True,
                        mlm_probability=0.5)
    for seed in range(20):
        _, labels = mask_tokens(ids, cfg, torch.Generator().manual_seed(seed), is_continuation=table)
        chosen = (labels != -100)[0].tolist()
        assert chosen[2] == chosen[3] and chosen[5] == chosen[6]


def test_golden_values_with_a_fixed_generator():
    ids = torch.tensor([[CLS, 10, 11, 12, 13, 14, 15, 16, 17, SEP, PAD, PAD]])
    attn = (ids != PAD).long()
    cfg = MaskingConfig(mask_id=MASK, vocab_size=20, special_ids=SPECIAL, mlm_probability=0.3,
                        exact_count=True)
    masked, labels = mask_tokens(ids, cfg, torch.Generator().manual_seed(0), attention_mask=attn)
    # round(0.3 * 8) = 2 targets. The first draw of manual_seed(0) is
    # [.496, .768, .089, .132, .307, ...]: among the 8 eligible positions 1..8 the two smallest are
    # positions 2 and 3. The second draw gives them .294 and .519, both < 0.8: both become [MASK].
    assert labels.tolist() == [[-100, -100, 11, 12, -100, -100, -100, -100, -100, -100, -100, -100]]
    assert masked.tolist() == [[CLS, 10, MASK, MASK, 13, 14, 15, 16, 17, SEP, PAD, PAD]]
    again, _ = mask_tokens(ids, cfg, torch.Generator().manual_seed(0), attention_mask=attn)
    assert torch.equal(again, masked)


def test_static_masking_depends_only_on_seed_and_index():
    ids, _ = batch(b=6, t=32)
    examples = [row for row in ids]
    cfg = MaskingConfig(mask_id=MASK, vocab_size=V, special_ids=SPECIAL)
    first = mask_static(examples, cfg, seed=7)
    again = mask_static(examples, cfg, seed=7)
    tail = mask_static(examples[3:], cfg, seed=7)
    other = mask_static(examples, cfg, seed=8)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(torch.stack([m for m, _ in first]), torch.stack([m for m, _ in other]))
    # example 3 masked alone at index 0 differs from its own mask at index 3: the index is the key
    assert any(not torch.equal(first[i + 3][1], tail[i][1]) for i in range(3))


def test_mlm_loss_sums_over_targets():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[-100, 3, -100, 1, -100], [6, -100, -100, -100, -100]])
    loss_sum, n = mlm_loss(logits, labels)
    expected = F.cross_entropy(logits[labels != -100], labels[labels != -100], reduction="sum")
    assert int(n) == 3
    torch.testing.assert_close(loss_sum, expected)


def test_bad_options_are_named():
    with pytest.raises(ConfigError, match="mlm_probability must be in"):
        MaskingConfig(mask_id=3, vocab_size=10, special_ids=(), mlm_probability=0.0)
    with pytest.raises(ConfigError, match="mask_id 30 is outside the vocabulary"):
        MaskingConfig(mask_id=30, vocab_size=10, special_ids=())
    cfg = MaskingConfig(mask_id=3, vocab_size=10, special_ids=(3,), whole_word=True)
    with pytest.raises(ConfigError, match="whole-word masking needs word_ids"):
        mask_tokens(torch.tensor([[4, 5]]), cfg, torch.Generator())
