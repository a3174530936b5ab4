"""Task heads and the one way to put a head on a backbone.

A backbone (any family's `...Model`) maps inputs to hidden states (B, T, D). A head maps those hidden
states, with the attention mask, to what a task needs. `TaskModel(backbone, head)` composes the two, so
every family gets every head without a class per model × task.

Heads: `LMHead` (B, T, V); `SequenceClassificationHead` (B, C) with "cls" / "mean" / "last" pooling;
`TokenClassificationHead` (B, T, C); `SpanHead` -> `SpanLogits` (start, end: (B, T) each); `ScalarHead` (B,).

Shape legend: B batch, T length, D model width, V vocabulary, C classes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn


class LMHead(nn.Module):
    """Hidden states -> next-token (or masked-token) logits (B, T, V).

    With `tied_to` the output matrix is the input embedding matrix (Press & Wolf 2017), as in GPT-2.
    With `softcap` c the logits are soft-capped to (-c, c) as c · tanh(logits / c) (Gemma 2, sec. 2).
    """

    def __init__(
        self, d_model: int, vocab_size: int, bias: bool = False, tied_to: nn.Embedding | None = None,
        softcap: float | None = None,
    ):
        super().__init__()
        self.lm_head = nn.Linear(d_model, vocab_size, bias=bias)
        self.softcap = softcap
        if tied_to is not None:
            self.lm_head.weight = tied_to.weight

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.lm_head(hidden)  # (B, T, V)
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def is_tied(head: LMHead, embedding: nn.Embedding) -> bool:
    """True when the head's output matrix is the embedding matrix itself (shared storage)."""
    return head.lm_head.weight is embedding.weight


POOLINGS = ("cls", "mean", "last")
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


def last_token_index(attention_mask: torch.Tensor | None, batch: int, length: int) -> torch.Tensor:
    """Index of the last real token of each row (B,); works for right and left padding alike."""
    if attention_mask is None:
        return torch.full((batch,), length - 1, dtype=torch.long)
    positions = torch.arange(length, device=attention_mask.device)  # (T,)
    return (attention_mask.to(torch.long) * (positions + 1)).argmax(dim=-1)  # (B,)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """(B, T, D) -> (B, D): the first token ("cls"), the masked mean ("mean") or the last real token ("last").

    "cls" takes position 0, which is [CLS] for BERT/ALBERT/DistilBERT and <s> for RoBERTa (right padding).
    "mean" averages real tokens only, as sentence-transformers does.
    """
    if how == "cls":
        return hidden[:, 0]
    if how == "mean":
        if attention_mask is None:
            return hidden.mean(dim=1)
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
    if how == "last":
        index = last_token_index(attention_mask, hidden.shape[0], hidden.shape[1]).to(hidden.device)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
    raise ValueError(f"pooling {how!r} is not one of {', '.join(POOLINGS)}")


class SequenceClassificationHead(nn.Module):
    """Hidden states -> one row of class logits per sequence (B, C).

    pool -> [dropout if dropout_before_dense] -> [dense -> activation] -> dropout -> classifier.

    Sub-modules: `dense` (Linear D->D, only when `activation` is set) and `classifier` (Linear D->C).
    The Hugging Face layouts map onto it as:
      - BERT/ALBERT: pooling="cls", activation="tanh" (`dense` holds the pooler), dropout before classifier.
      - RoBERTa: pooling="cls", activation="tanh", dropout_before_dense=True (`dense`, `classifier`=out_proj).
      - DistilBERT: pooling="cls", activation="relu" (`dense` = pre_classifier).
      - sentence-transformers style: pooling="mean", activation=None.
    """

    def __init__(
        self,
        d_model: int,
        num_labels: int,
        pooling: str = "cls",
        activation: str | None = "tanh",
        dropout: float = 0.1,
        dropout_before_dense: bool = False,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        if activation is not None and activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)} or None")
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.pooling = pooling
        self.num_labels = num_labels
        self.activation_name = activation
        self.dropout_before_dense = dropout_before_dense
        self.dense = nn.Linear(d_model, d_model) if activation is not None else None
        self.activation = ACTIVATIONS[activation]() if activation is not None else None
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(d_model, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = pool(hidden, attention_mask, self.pooling)  # (B, D)
        if self.dense is not None:
            if self.dropout_before_dense:
                x = self.dropout(x)
            x = self.activation(self.dense(x))
        return self.classifier(self.dropout(x))  # (B, C)


class TokenClassificationHead(nn.Module):
    """Hidden states -> per-token class logits (B, T, C): dropout then `classifier` (Linear D->C).

    Same layout as every Hugging Face `...ForTokenClassification` (BERT, RoBERTa, ALBERT, DistilBERT).
    Padding positions get logits too; the loss ignores them through labels of -100.
    """

    def __init__(self, d_model: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(d_model, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.dropout(hidden))  # (B, T, C)


@dataclass
class SpanLogits:
    """Start and end logits of an extractive-QA span, each (B, T)."""

    start_logits: torch.Tensor
    end_logits: torch.Tensor


class SpanHead(nn.Module):
    """Hidden states -> `SpanLogits` for extractive QA: `qa_outputs` (Linear D->2) split into start and end.

    Same layout as Hugging Face `...ForQuestionAnswering`. Logits are not masked here (so they equal the
    reference's); the span search in `plmkit.data.tasks` skips padding, question and special tokens.
    """

    def __init__(self, d_model: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.qa_outputs = nn.Linear(d_model, 2)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SpanLogits:
        logits = self.qa_outputs(self.dropout(hidden))  # (B, T, 2)
        start, end = logits.unbind(dim=-1)
        return SpanLogits(start_logits=start.contiguous(), end_logits=end.contiguous())  # (B, T) each


class ScalarHead(nn.Module):
    """Hidden states -> one scalar per sequence (B,), read at the last real token: reward and value models.

    `score` is Linear(D, 1) without bias (as in Hugging Face `...ForSequenceClassification` of decoders with
    num_labels=1). The last real token is found from the mask, so right and left padding give the same value.
    """

    def __init__(self, d_model: int, bias: bool = False):
        super().__init__()
        self.score = nn.Linear(d_model, 1, bias=bias)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.score(pool(hidden, attention_mask, "last")).squeeze(-1)  # (B,)


class TaskModel(nn.Module):
    """`head(backbone(inputs), attention_mask)`: any family with any head.

    Backbone inputs pass through unchanged (input_ids, attention_mask, position_ids, inputs_embeds,
    cache, token_type_ids, ... as the backbone's own forward names them).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def config(self):  # noqa: ANN201 - the backbone's family config dataclass
        return self.backbone.config

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **backbone_inputs: object,
    ) -> torch.Tensor | SpanLogits:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **backbone_inputs)
        return self.head(hidden, attention_mask)


def hf_classification_head(
    backbone: nn.Module, num_labels: int, pooling: str = "cls", dropout: float = 0.1
) -> SequenceClassificationHead:
    """The family's Hugging Face classification layout on top of the generic head.

    BERT/ALBERT classify the pooled [CLS] (dense + tanh, initialized from the checkpoint's pooler);
    RoBERTa uses its own dense + tanh with dropout before it; DistilBERT a dense + ReLU. Other families
    (decoders) read the last real token without a dense layer.
    """
    d_model = backbone.config.d_model
    model_type = getattr(backbone.config, "model_type", "")
    if model_type in ("bert", "albert"):
        return SequenceClassificationHead(d_model, num_labels, pooling, "tanh", dropout)
    if model_type == "roberta":
        return SequenceClassificationHead(
            d_model, num_labels, pooling, "tanh", dropout, dropout_before_dense=True
        )
    if model_type == "distilbert":
        return SequenceClassificationHead(d_model, num_labels, pooling, "relu", dropout)
    last = "last" if pooling == "cls" else pooling
    return SequenceClassificationHead(d_model, num_labels, last, None, dropout)


def attach_head(backbone: nn.Module, head: nn.Module) -> TaskModel:
    """Put a freshly built head on a pretrained backbone: its linear layers drawn as the family initializes
    them (normal(0, init_std), zero bias) from the caller's RNG, and a BERT/ALBERT pooler moved into the
    head's `dense`, which is where Hugging Face's classifiers read it."""
    if isinstance(backbone, TaskModel):  # a checkpoint loaded with a head: keep only its encoder
        backbone = backbone.backbone
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=getattr(backbone.config, "init_std", 0.02))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    pooler = getattr(backbone, "pooler", None)
    if pooler is not None:
        # The other heads have no pooler, so a saved checkpoint carries none.
        if isinstance(head, SequenceClassificationHead) and head.dense is not None:
            head.dense.load_state_dict(pooler.dense.state_dict())
        backbone.pooler = None
        backbone.config = replace(backbone.config, add_pooler=False)
    return TaskModel(backbone, head)
