"""Llama-style decoder (Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models").

GPT's modern descendant. Differences from GPT-2, each a paper's choice: rotary position embeddings on
queries and keys instead of learned absolute positions (Su et al. 2021, with a configurable base);
RMSNorm instead of LayerNorm, still pre-norm (Zhang & Sennrich 2019); a SwiGLU feed-forward
down(silu(gate(x)) * up(x)) (Shazeer 2020); grouped-query attention, where Hkv < H key/value heads
each serve H/Hkv query heads (Ainslie et al. 2023); no biases; untied output embeddings by default.

Shape legend: B batch, T length, S key slots, D model width, H heads, Hkv key/value heads,
Dh head width, F feed-forward width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.errors import ConfigError
from plmkit.models.cache import KVCache
from plmkit.models.heads import LMHead, TaskModel
from plmkit.models.layers import (
    Prefix,
    RMSNorm,
    apply_rotary,
    attention,
    causal_mask,
    causal_padding_mask,
    merge_heads,
    positions_from_mask,
    prepend_prefix,
    repeat_kv,
    rotary_tables,
    split_heads,
)


@dataclass
class LlamaConfig:
    vocab_size: int = 32000
    max_positions: int = 2048
    d_model: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int | None = None  # None: num_heads (no grouping)
    head_dim: int | None = None  # None: d_model // num_heads
    d_ff: int = 11008
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    dropout: float = 0.0
    init_std: float = 0.02
    model_type: str = "llama"

    def __post_init__(self) -> None:
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        if self.head_dim is None:
            if self.d_model % self.num_heads:
                raise ConfigError(
                    f"LlamaConfig.d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})"
                )
            self.head_dim = self.d_model // self.num_heads
        for name in ("vocab_size", "max_positions", "d_model", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "d_ff"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"LlamaConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"LlamaConfig.num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"LlamaConfig.head_dim must be even for rotary embeddings, got {self.head_dim}")


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(cfg.d_model, cfg.num_heads * cfg.head_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.num_kv_heads * cfg.head_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.num_kv_heads * cfg.head_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.d_model, bias=cfg.attention_bias)
        self.prefix: Prefix | None = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
    ) -> torch.Tensor:
        q = apply_rotary(split_heads(self.q_proj(x), self.num_heads), cos, sin)  # (B, H, T, Dh)
        k = apply_rotary(split_heads(self.k_proj(x), self.num_kv_heads), cos, sin)  # (B, Hkv, T, Dh)
        v = split_heads(self.v_proj(x), self.num_kv_heads)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, Hkv, S, Dh)
        # Prefix keys carry no rotation: they are learned vectors, not tokens at a position.
        if mask is None and self.prefix is not None:
            # SDPA's is_causal aligns top-left, which would hide prefix keys: spell the mask out.
            mask = causal_mask(q.shape[2], q.shape[2], device=q.device)[None, None]
        k, v, mask = prepend_prefix(self.prefix, k, v, mask)
        groups = self.num_heads // self.num_kv_heads
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)  # (B, H, S, Dh)
        dropout_p = self.dropout if self.training else 0.0
        out = attention(q, k, v, mask, is_causal=mask is None, dropout_p=dropout_p)
        return self.o_proj(merge_heads(out))


class LlamaMLP(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class LlamaBlock(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = LlamaAttention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache)
        return x + self.mlp(self.mlp_norm(x))


class LlamaModel(nn.Module):
    """The Llama backbone: token embedding, RoPE pre-RMSNorm blocks, final RMSNorm -> (B, T, D)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(LlamaBlock(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.d_model, eps=config.norm_eps)
        self.apply(self._init_weights)
        residual_std = config.init_std / math.sqrt(2 * config.num_layers)
        for block in self.layers:
            nn.init.normal_(block.attn.o_proj.weight, std=residual_std)
            nn.init.normal_(block.mlp.down_proj.weight, std=residual_std)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

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
                raise ConfigError("LlamaModel needs input_ids or inputs_embeds")
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, D)
        t = inputs_embeds.shape[1]
        if cache is not None:
            mask, cache_positions = cache.begin(attention_mask, t)  # (B, 1, T, S), (B, T)
            if position_ids is None:
                position_ids = cache_positions
        else:
            if attention_mask is not None and bool(attention_mask.all()):
                attention_mask = None  # no padding: SDPA's causal kernel beats an explicit (B, 1, T, T) mask
            mask = None if attention_mask is None else causal_padding_mask(attention_mask)
            if position_ids is None:
                if attention_mask is None:
                    position_ids = torch.arange(t, device=inputs_embeds.device)[None]
                else:
                    position_ids = positions_from_mask(attention_mask)
        cos, sin = rotary_tables(position_ids, self.config.head_dim, self.config.rope_base)  # (B, 1, T, Dh)
        x = inputs_embeds
        for block in self.layers:
            x = block(x, cos, sin, mask, cache)
        if cache is not None:
            cache.end(t)
        return self.norm(x)  # (B, T, D)


def llama_lm(config: LlamaConfig) -> TaskModel:
    """Llama causal LM: backbone + LM head (untied unless `tie_embeddings`)."""
    backbone = LlamaModel(config)
    tied = backbone.embed_tokens if config.tie_embeddings else None
    head = LMHead(config.d_model, config.vocab_size, bias=False, tied_to=tied)
    if tied is None:
        nn.init.normal_(head.lm_head.weight, std=config.init_std)
    return TaskModel(backbone, head)
