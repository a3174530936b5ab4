"""ALBERT (Lan et al. 2020, "ALBERT: A Lite BERT for Self-supervised Learning of Language Representations").

BERT's post-LN encoder with two parameter reductions (sec. 3.1):
- factorized embeddings: tokens are embedded in a small width E and projected up to the hidden width
  D by `embed_proj`, so the V x E table stays small when D grows;
- cross-layer sharing: `num_groups` groups of `inner_group_size` blocks are reused across the
  `num_layers` depth steps (the released models share one block across all 12 or 24 steps). Depth
  step i runs group `i * num_groups // num_layers`. A PEFT adapter on a shared block is shared too.
Pre-training replaces NSP with sentence-order prediction (SOP, sec. 4.2): the pair classifier says
whether two consecutive segments are in order or swapped. GELU is the tanh approximation ("gelu_new").

Shape legend: B batch, T length, D model width, E embedding width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.models.bert import (
    EncoderBlock,
    MaskedLMHead,
    Pooler,
    PreTrainingHead,
    check_activation,
    check_positive,
    encoder_mask,
    init_encoder_weights,
)
from plmkit.models.heads import TaskModel


@dataclass
class AlbertConfig:
    vocab_size: int = 30000
    embedding_size: int = 128  # E: the factorized embedding width
    d_model: int = 768
    num_layers: int = 12  # depth steps
    num_heads: int = 12
    d_ff: int | None = None  # None: 4 * d_model
    num_groups: int = 1  # distinct groups of blocks shared across depth
    inner_group_size: int = 1  # blocks per group, all run at each depth step of that group
    max_positions: int = 512
    type_vocab_size: int = 2
    activation: str = "gelu_new"
    dropout: float = 0.0
    attention_dropout: float = 0.0
    norm_eps: float = 1e-12
    pad_token_id: int = 0
    init_std: float = 0.02
    add_pooler: bool = True
    model_type: str = "albert"

    def __post_init__(self) -> None:
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        check_positive("AlbertConfig", self, ("vocab_size", "embedding_size", "d_model", "num_layers",
                                              "num_heads", "d_ff", "num_groups", "inner_group_size",
                                              "max_positions", "type_vocab_size"))
        check_activation("AlbertConfig", self.activation)
        if self.num_groups > self.num_layers:
            raise ConfigError(f"AlbertConfig.num_groups ({self.num_groups}) exceeds num_layers "
                              f"({self.num_layers})")


class AlbertModel(nn.Module):
    """ALBERT backbone: embeddings of width E, LayerNorm, projection to D, shared post-LN blocks
    -> last hidden states (B, T, D). `layers[g * inner_group_size + j]` is block j of group g."""

    def __init__(self, config: AlbertConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.embedding_size, padding_idx=c.pad_token_id)
        self.embed_positions = nn.Embedding(c.max_positions, c.embedding_size)
        self.embed_token_types = nn.Embedding(c.type_vocab_size, c.embedding_size)
        self.embed_norm = nn.LayerNorm(c.embedding_size, eps=c.norm_eps)
        self.dropout = nn.Dropout(c.dropout)
        self.embed_proj = nn.Linear(c.embedding_size, c.d_model)
        self.layers = nn.ModuleList(
            EncoderBlock(c.d_model, c.num_heads, c.d_ff, c.activation, c.dropout, c.attention_dropout,
                         c.norm_eps)
            for _ in range(c.num_groups * c.inner_group_size)
        )
        self.pooler = Pooler(c.d_model) if c.add_pooler else None
        self.apply(lambda m: init_encoder_weights(m, c.init_std))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            if input_ids is None:
                raise ConfigError("AlbertModel needs input_ids or inputs_embeds")
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, E)
        b, t, _ = inputs_embeds.shape
        if position_ids is None:
            position_ids = torch.arange(t, device=inputs_embeds.device)[None].expand(b, t)
        if token_type_ids is None:
            token_type_ids = torch.zeros(b, t, dtype=torch.long, device=inputs_embeds.device)
        x = inputs_embeds + self.embed_positions(position_ids) + self.embed_token_types(token_type_ids)
        x = self.embed_proj(self.dropout(self.embed_norm(x)))  # (B, T, D)
        mask = encoder_mask(attention_mask)
        c = self.config
        for step in range(c.num_layers):
            group = step * c.num_groups // c.num_layers
            for j in range(c.inner_group_size):
                x = self.layers[group * c.inner_group_size + j](x, mask)
        return x  # (B, T, D)


def albert_mlm_head(config: AlbertConfig, backbone: AlbertModel) -> MaskedLMHead:
    head = MaskedLMHead(config.d_model, config.vocab_size, config.activation, config.norm_eps,
                        tied_to=backbone.embed_tokens, d_embed=config.embedding_size)
    init_encoder_weights(head.dense, config.init_std)
    return head


def albert_mlm(config: AlbertConfig) -> TaskModel:
    """ALBERT for masked language modelling: backbone (no pooler) + MLM head tied to the E-wide embeddings."""
    config = replace(config, add_pooler=False)
    backbone = AlbertModel(config)
    return TaskModel(backbone, albert_mlm_head(config, backbone))


def albert_pretraining(config: AlbertConfig) -> TaskModel:
    """ALBERT with MLM + SOP heads -> `PreTrainingLogits` (pair_logits: 0 in order, 1 swapped)."""
    config = replace(config, add_pooler=False)
    backbone = AlbertModel(config)
    head = PreTrainingHead(albert_mlm_head(config, backbone), config.d_model, pair_task="sop")
    init_encoder_weights(head.pooler.dense, config.init_std)
    init_encoder_weights(head.pair_classifier, config.init_std)
    return TaskModel(backbone, head)
