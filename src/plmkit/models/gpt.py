"""GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners").

A decoder-only transformer trained to maximize P(x_t | x_<t). The architecture choices, top to bottom:
learned absolute position embeddings; pre-LN blocks (LayerNorm before attention and before the MLP,
a final LayerNorm after the last block, sec. 2.3); GELU with the tanh approximation; an MLP 4x wide;
biases everywhere; the output matrix tied to the token embedding. Initialization follows GPT-2: N(0, 0.02)
everywhere, with the projections that write into the residual stream scaled by 1/sqrt(2 * num_layers)
so the residual variance does not grow with depth.

Shape legend: B batch, T length, S key slots, D model width, H heads, Dh head width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.errors import ConfigError
from plmkit.models.cache import KVCache
from plmkit.models.heads import LMHead, TaskModel
from plmkit.models.layers import (
    Prefix,
    attention,
    causal_mask,
    causal_padding_mask,
    init_gpt2,
    merge_heads,
    positions_from_mask,
    prepend_prefix,
    split_heads,
)


@dataclass
class GPT2Config:
    vocab_size: int = 50257
    max_positions: int = 1024
    d_model: int = 768
    num_layers: int = 12
    num_heads: int = 12
    d_ff: int | None = None  # None: 4 * d_model
    dropout: float = 0.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02
    model_type: str = "gpt2"

    def __post_init__(self) -> None:
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        for name in ("vocab_size", "max_positions", "d_model", "num_layers", "num_heads", "d_ff"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"GPT2Config.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.num_heads:
            raise ConfigError(
                f"GPT2Config.d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"GPT2Config.dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads


class GPT2Attention(nn.Module):
    def __init__(self, cfg: GPT2Config, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads = cfg.num_heads
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.prefix: Prefix | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        q = split_heads(self.q_proj(x), self.num_heads)  # (B, H, T, Dh)
        k = split_heads(self.k_proj(x), self.num_heads)
        v = split_heads(self.v_proj(x), self.num_heads)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, H, S, Dh)
        if mask is None and self.prefix is not None:
            # SDPA's is_causal aligns top-left, which would hide prefix keys: spell the mask out.
            mask = causal_mask(q.shape[2], q.shape[2], device=q.device)[None, None]
        k, v, mask = prepend_prefix(self.prefix, k, v, mask)
        dropout_p = self.dropout if self.training else 0.0
        out = attention(q, k, v, mask, is_causal=mask is None, dropout_p=dropout_p)
        return self.resid_dropout(self.o_proj(merge_heads(out)))


class GPT2MLP(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One fused kernel for GELU-tanh, the approximation GPT-2 was trained with.
        return self.dropout(self.down_proj(F.gelu(self.up_proj(x), approximate="tanh")))


class GPT2Block(nn.Module):
    def __init__(self, cfg: GPT2Config, layer: int):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = GPT2Attention(cfg, layer)
        self.mlp_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = GPT2MLP(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), mask, cache)
        return x + self.mlp(self.mlp_norm(x))


class GPT2Model(nn.Module):
    """The GPT-2 backbone: token + position embeddings, pre-LN blocks, final LayerNorm -> (B, T, D)."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.embed_positions = nn.Embedding(config.max_positions, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(GPT2Block(config, i) for i in range(config.num_layers))
        self.norm = nn.LayerNorm(config.d_model, eps=config.norm_eps)
        # GPT-2 sec. 2.3: N(0, init_std), residual-writing projections scaled by 1/sqrt(N), N = 2 per block.
        init_gpt2(self, config.init_std)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            if input_ids is None:
                raise ConfigError("GPT2Model needs input_ids or inputs_embeds")
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, D)
        t = inputs_embeds.shape[1]
        if cache is not None:
            mask, cache_positions = cache.begin(attention_mask, t)  # (B, 1, T, S), (B, T)
            if position_ids is None:
                position_ids = cache_positions
        else:
            if attention_mask is not None and bool((attention_mask == 1).all()):
                attention_mask = None  # no padding: SDPA's causal kernel beats an explicit (B, 1, T, T) mask
            mask = None if attention_mask is None else causal_padding_mask(attention_mask)
            if position_ids is None:
                if attention_mask is None:
                    position_ids = torch.arange(t, device=inputs_embeds.device)[None]
                else:
                    position_ids = positions_from_mask(attention_mask)
        x = self.dropout(inputs_embeds + self.embed_positions(position_ids))
        for block in self.layers:
            x = block(x, mask, cache)
        if cache is not None:
            cache.end(t)
        return self.norm(x)  # (B, T, D)


def gpt2_lm(config: GPT2Config) -> TaskModel:
    """GPT-2 causal LM: backbone + LM head (tied to the token embedding unless the config says not)."""
    backbone = GPT2Model(config)
    tied = backbone.embed_tokens if config.tie_embeddings else None
    head = LMHead(config.d_model, config.vocab_size, bias=False, tied_to=tied)
    if tied is None:
        nn.init.normal_(head.lm_head.weight, std=config.init_std)
    return TaskModel(backbone, head)


@torch.no_grad()
def extend_positions(model: nn.Module, max_positions: int) -> nn.Module:
    """Give a GPT-2 (a `TaskModel` or its backbone) `max_positions` learned positions, in place, by linear
    interpolation of the trained table (position interpolation, Chen et al. 2023): position i of the new
    table is position i * (old - 1) / (new - 1) of the old, so the model reads a longer text with positions
    it knows and needs only a short fine-tune. Returns the model."""
    backbone = getattr(model, "backbone", model)
    if not isinstance(backbone, GPT2Model):
        raise ConfigError(f"extend_positions needs a GPT-2 model, got {type(backbone).__name__}")
    old = backbone.embed_positions.weight
    if max_positions < old.shape[0]:
        raise ConfigError(
            f"extend_positions: {max_positions} positions is fewer than the {old.shape[0]} it has"
        )
    # (1, D, old) -> (1, D, new): interpolate along the position axis, corners aligned so 0 and the last
    # position keep their vectors.
    table = F.interpolate(old.T[None].float(), size=max_positions, mode="linear", align_corners=True)
    embed = nn.Embedding(max_positions, old.shape[1], device=old.device, dtype=old.dtype)
    embed.weight.copy_(table[0].T.to(old.dtype))
    embed.weight.requires_grad_(old.requires_grad)
    backbone.embed_positions = embed
    backbone.config.max_positions = max_positions
    return model
