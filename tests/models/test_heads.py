"""Generic task heads: shapes, pooling rules, padding invariance and the Hugging Face layouts they express."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plmkit.models.heads import (
    ScalarHead,
    SequenceClassificationHead,
    SpanHead,
    SpanLogits,
    TaskModel,
    TokenClassificationHead,
    pool,
)

B, T, D = 3, 5, 8


def _hidden_and_mask() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, T, D, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    return hidden, mask


def test_pool_cls_mean_last_follow_the_mask():
    hidden, mask = _hidden_and_mask()
    torch.testing.assert_close(pool(hidden, mask, "cls"), hidden[:, 0])
    torch.testing.assert_close(pool(hidden, mask, "mean")[1], hidden[1, :3].mean(0))
    torch.testing.assert_close(pool(hidden, mask, "mean")[2], hidden[2, 0])
    last = pool(hidden, mask, "last")
    torch.testing.assert_close(last[0], hidden[0, 4])
    torch.testing.assert_close(last[1], hidden[1, 2])
    torch.testing.assert_close(last[2], hidden[2, 0])


def test_last_pooling_is_the_same_for_left_padding():
    hidden, _ = _hidden_and_mask()
    left_mask = torch.tensor([[0, 0, 1, 1, 1]])
    assert torch.equal(pool(hidden[:1], left_mask, "last"), hidden[:1, 4])


def test_pool_rejects_unknown_mode():
    with pytest.raises(ValueError, match="pooling 'max' is not one of cls, mean, last"):
        SequenceClassificationHead(D, 2, pooling="max")


def test_sequence_head_matches_bert_pooler_then_classifier():
    hidden, mask = _hidden_and_mask()
    head = SequenceClassificationHead(D, 3, pooling="cls", activation="tanh", dropout=0.1).eval()
    expected = head.classifier(torch.tanh(head.dense(hidden[:, 0])))
    torch.testing.assert_close(head(hidden, mask), expected)
    assert head(hidden, mask).shape == (B, 3)


def test_sequence_head_without_dense_has_no_extra_params():
    head = SequenceClassificationHead(D, 2, pooling="mean", activation=None)
    assert head.dense is None
    assert {n for n, _ in head.named_parameters()} == {"classifier.weight", "classifier.bias"}


def test_distilbert_layout_uses_relu():
    hidden, mask = _hidden_and_mask()
    head = SequenceClassificationHead(D, 2, activation="relu").eval()
    torch.testing.assert_close(head(hidden, mask), head.classifier(torch.relu(head.dense(hidden[:, 0]))))


def test_token_head_shape_and_rows_independent_of_padding():
    hidden, mask = _hidden_and_mask()
    head = TokenClassificationHead(D, 4).eval()
    out = head(hidden, mask)
    assert out.shape == (B, T, 4)
    torch.testing.assert_close(out[1, :3], head(hidden[1:2, :3], mask[1:2, :3])[0])


def test_span_head_splits_qa_outputs_into_start_and_end():
    hidden, mask = _hidden_and_mask()
    head = SpanHead(D).eval()
    out = head(hidden, mask)
    assert isinstance(out, SpanLogits)
    full = head.qa_outputs(hidden)
    torch.testing.assert_close(out.start_logits, full[..., 0])
    torch.testing.assert_close(out.end_logits, full[..., 1])


def test_scalar_head_reads_last_real_token_for_either_padding():
    hidden, _ = _hidden_and_mask()
    head = ScalarHead(D)
    right = head(hidden[:1, :3], torch.ones(1, 3, dtype=torch.long))
    padded = torch.cat([hidden[:1, :3], torch.zeros(1, 2, D)], dim=1)
    left_padded = torch.cat([torch.zeros(1, 2, D), hidden[:1, :3]], dim=1)
    torch.testing.assert_close(head(padded, torch.tensor([[1, 1, 1, 0, 0]])), right)
    torch.testing.assert_close(head(left_padded, torch.tensor([[0, 0, 1, 1, 1]])), right)
    assert right.shape == (1,)


class _Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = object()
        self.embed_tokens = nn.Embedding(11, D)

    def forward(self, input_ids, attention_mask=None):  # noqa: ANN001, ANN201
        return self.embed_tokens(input_ids)


def test_task_model_passes_mask_to_head():
    model = TaskModel(_Embed(), SequenceClassificationHead(D, 2, pooling="mean", activation=None)).eval()
    ids = torch.tensor([[1, 2, 3, 0]])
    out = model(ids, torch.tensor([[1, 1, 1, 0]]))
    torch.testing.assert_close(out, model(ids[:, :3], torch.ones(1, 3, dtype=torch.long)))
