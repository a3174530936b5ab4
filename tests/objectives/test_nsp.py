"""NSP and SOP pair builders: label statistics, segment correctness, token types; the pair loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plmkit.errors import ConfigError, DataError
from plmkit.objectives.nsp import build_nsp_pairs, build_sop_pairs, collate_pairs, pair_loss

CLS, SEP = 1, 2


def documents(n_docs: int = 120, seed: int = 0) -> list[list[list[int]]]:
    """Every token is unique: token 1000 * (doc + 1) + 10 * sentence + k, so its origin is readable."""
    g = torch.Generator().manual_seed(seed)
    docs = []
    for d in range(n_docs):
        n_sent = int(torch.randint(2, 12, (), generator=g))
        docs.append([[1000 * (d + 1) + 10 * s + k for k in range(int(torch.randint(2, 8, (), generator=g)))]
                     for s in range(n_sent)])
    return docs


def origin(token: int) -> tuple[int, int, int]:
    return token // 1000 - 1, (token % 1000) // 10, token % 10


def split(pair) -> tuple[list[int], list[int]]:
    ids, types = pair.input_ids, pair.token_type_ids
    assert ids[0] == CLS and ids[-1] == SEP
    a = [t for t, ty in zip(ids[1:], types[1:]) if ty == 0][:-1]
    b = [t for t, ty in zip(ids, types) if ty == 1][:-1]
    assert ids == [CLS, *a, SEP, *b, SEP]
    assert types == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    return a, b


def test_nsp_pairs_are_half_next_half_random():
    pairs = build_nsp_pairs(documents(400), max_length=32, cls_id=CLS, sep_id=SEP,
                            generator=torch.Generator().manual_seed(0))
    assert len(pairs) > 500
    labels = torch.tensor([p.label for p in pairs], dtype=torch.float)
    assert abs(labels.mean().item() - 0.5) < 0.1
    for p in pairs:
        assert len(p.input_ids) <= 32
        a, b = split(p)
        assert a and b
        doc_a, doc_b = origin(a[-1])[0], origin(b[0])[0]
        if p.label == 0:  # B is the text right after A in the same document
            assert doc_a == doc_b
            (_, s, k), nxt = origin(a[-1]), origin(b[0])[1:]
            assert nxt in ((s, k + 1), (s + 1, 0))
        else:  # B comes from another document
            assert doc_a != doc_b
        assert len({origin(t)[0] for t in a}) == 1  # A never crosses documents


def test_sop_pairs_are_half_swapped():
    pairs = build_sop_pairs(documents(400), max_length=32, cls_id=CLS, sep_id=SEP,
                            generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([p.label for p in pairs], dtype=torch.float)
    assert abs(labels.mean().item() - 0.5) < 0.1
    for p in pairs:
        a, b = split(p)
        assert {origin(t)[0] for t in a + b} == {origin(a[0])[0]}  # one document
        first, second = (a, b) if p.label == 0 else (b, a)
        assert origin(first[-1])[1:] < origin(second[0])[1:]  # `first` precedes `second` in the document


def test_builders_are_deterministic_given_the_generator():
    docs = documents(20)
    one = build_nsp_pairs(docs, 32, CLS, SEP, torch.Generator().manual_seed(3))
    two = build_nsp_pairs(docs, 32, CLS, SEP, torch.Generator().manual_seed(3))
    assert [p.input_ids for p in one] == [p.input_ids for p in two]


def test_collate_and_loss():
    pairs = build_sop_pairs(documents(4), 24, CLS, SEP, torch.Generator().manual_seed(0))
    batch = collate_pairs(pairs, pad_id=0)
    lengths = torch.tensor([len(p.input_ids) for p in pairs])
    assert torch.equal(batch["attention_mask"].sum(-1), lengths)
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    logits = torch.randn(len(pairs), 2)
    loss_sum, n = pair_loss(logits, batch["pair_labels"])
    assert n == len(pairs)
    torch.testing.assert_close(loss_sum, F.cross_entropy(logits, batch["pair_labels"], reduction="sum"))


def test_bad_input_is_named():
    with pytest.raises(DataError, match="needs at least two non-empty documents"):
        build_nsp_pairs([[[5, 6], [7]]], 16, CLS, SEP, torch.Generator())
    with pytest.raises(DataError, match="every document is empty"):
        build_sop_pairs([[], [[]]], 16, CLS, SEP, torch.Generator())
    with pytest.raises(ConfigError, match="max_length must be at least 5"):
        build_sop_pairs([[[5, 6]]], 4, CLS, SEP, torch.Generator())
