"""Gemma 2 decoder (Gemma Team 2024, "Gemma 2: Improving Open Language Models at a Practical Size").

The Llama-style decoder (RoPE, RMSNorm, grouped-query attention, a gated feed-forward) with the changes
only Gemma 2 makes, each written here where a reader of this family looks for it:

- GeGLU feed-forward down(gelu_tanh(gate(x)) * up(x)) instead of SwiGLU (Shazeer 2020).
- Norms before *and after* each sub-layer: x + post_norm(attn(norm(x))), the same around the MLP (sec. 2).
- Gemma's RMSNorm scales by (1 + weight), with the weight initialised at 0, and multiplies in fp32.
- Token embeddings scaled by √D (kept as in the checkpoint code: √D rounded to the weight's dtype).
- Attention scores scaled by query_pre_attn_scalar^-1/2 rather than Dh^-1/2, and soft-capped as
  c · tanh(scores / c) before the softmax; final logits soft-capped the same way (sec. 2, "soft-capping").
- Sliding-window attention (4096) on every other layer, starting with the first; the rest attend globally.

What Gemma 2 shares with other families comes from elsewhere: rotary tables and window masks from
`layers.py`, grouped-query helpers and mask building from `llama.py`, the KV cache (which keeps only the
window for the sliding layers) from `cache.py`, the logit soft-capping from `heads.LMHead(softcap=...)`.

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
    RopeScaling,
    apply_rotary,
    attention,
    causal_mask,
    merge_heads,
    prepend_prefix,
    repeat_kv,
    rotary_tables,
    split_heads,
)
from plmkit.models.llama import check_heads, check_window, layer_windows, window_masks


@dataclass
class Gemma2Config:
    vocab_size: int = 256000
    max_positions: int = 8192
    d_model: int = 2304
    num_layers: int = 26
    num_heads: int = 8
    num_kv_heads: int | None = 4
    head_dim: int | None = 256
    d_ff: int = 9216
    rope_base: float = 10000.0
    rope_scaling: RopeScaling | None = None
    norm_eps: float = 1e-6
    attention_bias: bool = False
    query_pre_attn_scalar: float = 256.0  # scores are scaled by this ** -0.5
    attn_softcap: float | None = 50.0
    final_softcap: float | None = 30.0
    sliding_window: int | None = 4096
    sliding_layers: tuple[int, ...] | None = None  # None: layers 0, 2, 4, ...
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    model_type: str = "gemma2"

    def __post_init__(self) -> None:
        self.num_kv_heads, self.head_dim = check_heads(
            "Gemma2Config", self.d_model, self.num_heads, self.num_kv_heads, self.head_dim
        )
        for name in ("vocab_size", "max_positions", "num_layers", "d_ff", "query_pre_attn_scalar"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"Gemma2Config.{name} must be positive, got {getattr(self, name)}")
        for name in ("attn_softcap", "final_softcap"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"Gemma2Config.{name} must be positive or None, got {getattr(self, name)}")
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        if self.sliding_window is not None and self.sliding_layers is None:
            self.sliding_layers = tuple(range(0, self.num_layers, 2))
        self.sliding_layers = check_window(
            "Gemma2Config", self.sliding_window, self.sliding_layers, self.num_layers, self.max_positions
        )

    def layer_windows(self) -> list[int | None]:
        """The attention window of each layer (None: full causal attention)."""
        return layer_windows(self.sliding_window, self.sliding_layers, self.num_layers)


class Gemma2RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · (1 + weight), all in fp32 before casting back (Gemma's convention)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * (1.0 + self.weight.float())).type_as(x)


class ScaledEmbedding(nn.Embedding):
    """An embedding whose output is multiplied by √D (kept an nn.Embedding so tying and resizing work)."""

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__(vocab_size, d_model)
        self.scale = math.sqrt(d_model)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # The reference rounds √D to the weight's dtype first (55.4256 becomes 55.5 in bf16); so do we.
        scale = torch.tensor(self.scale, dtype=self.weight.dtype, device=self.weight.device)
        return super().forward(input_ids) * scale


def softcapped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    softcap: float,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """softmax(c · tanh(q kᵀ · scale / c) + mask) v; q (B, H, T, Dh), k, v (B, H, S, Dh), bool mask.

    The tanh sits between the product and the softmax, which PyTorch's fused kernel cannot express.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (B, H, T, S)
    scores = torch.tanh(scores / softcap) * softcap
    if mask is None:
        mask = causal_mask(q.shape[2], k.shape[2], device=q.device)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
    if dropout_p:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v)  # (B, H, T, Dh)


class Gemma2Attention(nn.Module):
    def __init__(self, cfg: Gemma2Config, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.dropout = cfg.dropout
        self.window = cfg.layer_windows()[layer]
        self.scale = cfg.query_pre_attn_scalar**-0.5
        self.softcap = cfg.attn_softcap
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
        if mask is None and self.prefix is not None:
            mask = causal_mask(q.shape[2], q.shape[2], device=q.device)[None, None]
        k, v, mask = prepend_prefix(self.prefix, k, v, mask)
        groups = self.num_heads // self.num_kv_heads
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)  # (B, H, S, Dh)
        dropout_p = self.dropout if self.training else 0.0
        if self.softcap is None:
            out = attention(q, k, v, mask, is_causal=mask is None, dropout_p=dropout_p, scale=self.scale)
        else:
            out = softcapped_attention(q, k, v, mask, self.scale, self.softcap, dropout_p)
        return self.o_proj(merge_heads(out))


class Gemma2MLP(nn.Module):
    def __init__(self, cfg: Gemma2Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))  # GeGLU


class Gemma2Block(nn.Module):
    def __init__(self, cfg: Gemma2Config, layer: int):
        super().__init__()
        self.attn_norm = Gemma2RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Gemma2Attention(cfg, layer)
        self.post_attn_norm = Gemma2RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp_norm = Gemma2RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = Gemma2MLP(cfg)
        self.post_mlp_norm = Gemma2RMSNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
    ) -> torch.Tensor:
        x = x + self.post_attn_norm(self.attn(self.attn_norm(x), cos, sin, mask, cache))
        return x + self.post_mlp_norm(self.mlp(self.mlp_norm(x)))


class Gemma2Model(nn.Module):
    """The Gemma 2 backbone: √D-scaled embedding, sandwich-norm blocks, final norm -> (B, T, D)."""

    def __init__(self, config: Gemma2Config):
        super().__init__()
        self.config = config
        self.embed_tokens = ScaledEmbedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Gemma2Block(config, i) for i in range(config.num_layers))
        self.norm = Gemma2RMSNorm(config.d_model, eps=config.norm_eps)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=config.init_std)
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
                raise ConfigError("Gemma2Model needs input_ids or inputs_embeds")
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, D), already × √D
        t = inputs_embeds.shape[1]
        cfg = self.config
        mask, window_mask, positions = window_masks(
            attention_mask, t, cfg.sliding_window, inputs_embeds.device, cache
        )
        if position_ids is None:
            position_ids = positions
        cos, sin = rotary_tables(  # (B, 1, T, Dh)
            position_ids, cfg.head_dim, cfg.rope_base, cfg.rope_scaling, cfg.max_positions
        )
        x = inputs_embeds
        for block in self.layers:
            x = block(x, cos, sin, mask if block.attn.window is None else window_mask, cache)
        if cache is not None:
            cache.end(t)
        return self.norm(x)  # (B, T, D)


def gemma2_lm(config: Gemma2Config) -> TaskModel:
    """Gemma 2 causal LM: backbone + soft-capped LM head (tied to the embedding unless told otherwise)."""
    backbone = Gemma2Model(config)
    tied = backbone.embed_tokens if config.tie_embeddings else None
    head = LMHead(config.d_model, config.vocab_size, bias=False, tied_to=tied, softcap=config.final_softcap)
    if tied is None:
        nn.init.normal_(head.lm_head.weight, std=config.init_std)
    return TaskModel(backbone, head)
