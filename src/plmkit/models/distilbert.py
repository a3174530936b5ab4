"""DistilBERT (Sanh et al. 2019, "DistilBERT, a distilled version of BERT: smaller, faster, cheaper
and lighter").

BERT's post-LN encoder with half the layers (sec. 3: the token-type embeddings and the pooler are
removed, and the student is initialized from every other teacher layer). Learned absolute positions,
exact GELU, LayerNorm eps 1e-12. The distillation objective itself lives in `plmkit.objectives`.

Shape legend: B batch, T length, D model width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.models.bert import (
    EncoderBlock,
    MaskedLMHead,
    check_activation,
    check_positive,
    encoder_mask,
    init_encoder_weights,
)
from plmkit.models.heads import TaskModel


@dataclass
class DistilBertConfig:
    vocab_size: int = 30522
    d_model: int = 768
    num_layers: int = 6
    num_heads: int = 12
    d_ff: int | None = None  # None: 4 * d_model
    max_positions: int = 512
    activation: str = "gelu"
    dropout: float = 0.1
    attention_dropout: float = 0.1
    norm_eps: float = 1e-12
    pad_token_id: int = 0
    init_std: float = 0.02
    model_type: str = "distilbert"

    def __post_init__(self) -> None:
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        check_positive("DistilBertConfig", self, ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff",
                                                  "max_positions"))
        check_activation("DistilBertConfig", self.activation)


class DistilBertModel(nn.Module):
    """DistilBERT backbone: token + position embeddings, LayerNorm, post-LN blocks -> (B, T, D)."""

    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_token_id)
        self.embed_positions = nn.Embedding(c.max_positions, c.d_model)
        self.embed_norm = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.dropout = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(
            EncoderBlock(c.d_model, c.num_heads, c.d_ff, c.activation, c.dropout, c.attention_dropout,
                         c.norm_eps)
            for _ in range(c.num_layers)
        )
        self.apply(lambda m: init_encoder_weights(m, c.init_std))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            if input_ids is None:
                raise ConfigError("DistilBertModel needs input_ids or inputs_embeds")
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, D)
        b, t, _ = inputs_embeds.shape
        if position_ids is None:
            position_ids = torch.arange(t, device=inputs_embeds.device)[None].expand(b, t)
        x = self.dropout(self.embed_norm(inputs_embeds + self.embed_positions(position_ids)))
        mask = encoder_mask(attention_mask)
        for block in self.layers:
            x = block(x, mask)
        return x  # (B, T, D)


def distilbert_mlm(config: DistilBertConfig) -> TaskModel:
    """DistilBERT for masked language modelling: backbone + MLM head tied to the token embeddings."""
    backbone = DistilBertModel(config)
    head = MaskedLMHead(config.d_model, config.vocab_size, config.activation, config.norm_eps,
                        tied_to=backbone.embed_tokens)
    init_encoder_weights(head.dense, config.init_std)
    return TaskModel(backbone, head)
