"""Task heads and the one way to put a head on a backbone.

A backbone (any family's `...Model`) maps inputs to hidden states (B, T, D). A head maps those hidden
states, with the attention mask, to what a task needs. `TaskModel(backbone, head)` composes the two, so
every family gets every head without a class per model × task.

Shape legend: B batch, T length, D model width, V vocabulary, C classes.
"""

from __future__ import annotations

import torch
from torch import nn


class LMHead(nn.Module):
    """Hidden states -> next-token (or masked-token) logits (B, T, V).

    With `tied_to` the output matrix is the input embedding matrix (Press & Wolf 2017), as in GPT-2.
    """

    def __init__(self, d_model: int, vocab_size: int, bias: bool = False, tied_to: nn.Embedding | None = None):
        super().__init__()
        self.lm_head = nn.Linear(d_model, vocab_size, bias=bias)
        if tied_to is not None:
            self.lm_head.weight = tied_to.weight

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.lm_head(hidden)  # (B, T, V)


def is_tied(head: LMHead, embedding: nn.Embedding) -> bool:
    """True when the head's output matrix is the embedding matrix itself (shared storage)."""
    return head.lm_head.weight is embedding.weight


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
    ) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **backbone_inputs)
        return self.head(hidden, attention_mask)
