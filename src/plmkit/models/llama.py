"""Llama-style decoder (Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models").

GPT's modern descendant. Differences from GPT-2, each a paper's choice: rotary position embeddings on
queries and keys instead of learned absolute positions (Su et al. 2021, with a configurable base);
RMSNorm instead of LayerNorm, still pre-norm (Zhang & Sennrich 2019); a SwiGLU feed-forward
down(silu(gate(x)) * up(x)) (Shazeer 2020); grouped-query attention, where Hkv < H key/value heads
each serve H/Hkv query heads (Ainslie et al. 2023); no biases; untied output embeddings by default.

The block's options are the choices several later families share, each with one name and one meaning:
`rope_scaling` (a `layers.RopeScaling`: linear, dynamic NTK, YaRN, Llama 3.1, LongRoPE), `qkv_bias`
(biases on q/k/v only: Qwen2), `attention_bias` (biases on q/k/v/o: Llama's option), `qk_norm`
(RMSNorm over each head of q and k before the rotation: Qwen3, Wortsman et al. 2023) and
`sliding_window` with `sliding_layers` (each query sees only the last W positions: Mistral,
Phi-3; on alternate layers: Gemma 2, whose other changes live in gemma2.py). `model_type` names the
Hugging Face layout the model is saved as.

Shape legend: B batch, T length, S key slots, D model width, H heads, Hkv key/value heads,
Dh head width, F feed-forward width, V vocabulary.
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
    RMSNorm,
    RopeScaling,
    apply_rotary,
    attention,
    causal_mask,
    causal_padding_mask,
    init_gpt2,
    merge_heads,
    positions_from_mask,
    prepend_prefix,
    repeat_kv,
    rotary_tables,
    sliding_window_mask,
    split_heads,
)

# The Hugging Face model types a LlamaConfig is saved as (each is this block with some options set).
LLAMA_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3")


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
    rope_scaling: RopeScaling | None = None  # None: plain RoPE
    qkv_bias: bool = False  # biases on q, k, v only (o has none)
    qk_norm: bool = False  # RMSNorm over each query and key head before the rotation
    sliding_window: int | None = None  # W: a query sees itself and the W - 1 positions before it
    sliding_layers: tuple[int, ...] | None = None  # layers that use the window; None: all of them
    model_type: str = "llama"

    def __post_init__(self) -> None:
        self.num_kv_heads, self.head_dim = check_heads(
            "LlamaConfig", self.d_model, self.num_heads, self.num_kv_heads, self.head_dim
        )
        for name in ("vocab_size", "max_positions", "num_layers", "d_ff"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"LlamaConfig.{name} must be positive, got {getattr(self, name)}")
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        if self.model_type not in LLAMA_MODEL_TYPES:
            raise ConfigError(
                f"LlamaConfig.model_type {self.model_type!r} is not one of {', '.join(LLAMA_MODEL_TYPES)}"
            )
        self.sliding_layers = check_window(
            "LlamaConfig", self.sliding_window, self.sliding_layers, self.num_layers, self.max_positions
        )

    def layer_windows(self) -> list[int | None]:
        """The attention window of each layer (None: full causal attention)."""
        return layer_windows(self.sliding_window, self.sliding_layers, self.num_layers)


def check_heads(
    where: str, d_model: int, num_heads: int, num_kv_heads: int | None, head_dim: int | None
) -> tuple[int, int]:
    """Validated (num_kv_heads, head_dim) of a grouped-query attention config."""
    for name, value in (("d_model", d_model), ("num_heads", num_heads)):
        if value <= 0:
            raise ConfigError(f"{where}.{name} must be positive, got {value}")
    if num_kv_heads is None:
        num_kv_heads = num_heads
    if head_dim is None:
        if d_model % num_heads:
            raise ConfigError(f"{where}.d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        head_dim = d_model // num_heads
    if num_kv_heads <= 0 or head_dim <= 0:
        raise ConfigError(f"{where}: num_kv_heads ({num_kv_heads}), head_dim ({head_dim}) must be positive")
    if num_heads % num_kv_heads:
        raise ConfigError(
            f"{where}.num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})"
        )
    if head_dim % 2:
        raise ConfigError(f"{where}.head_dim must be even for rotary embeddings, got {head_dim}")
    return num_kv_heads, head_dim


def check_window(
    where: str, window: int | None, layers: tuple[int, ...] | list[int] | None, num_layers: int,
    max_positions: int,
) -> tuple[int, ...] | None:
    """Validated sliding-window layers (a tuple, or None for every layer)."""
    if window is None:
        return None if layers is None else tuple(layers)
    if window <= 0:
        raise ConfigError(f"{where}.sliding_window must be positive, got {window}")
    if window > max_positions:
        raise ConfigError(
            f"{where}.sliding_window ({window}) is larger than the context max_positions ({max_positions})"
        )
    if layers is None:
        return None
    layers = tuple(layers)
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ConfigError(f"{where}.sliding_layers has layer {bad[0]} outside 0..{num_layers - 1}")
    return layers


def layer_windows(window: int | None, layers: tuple[int, ...] | None, num_layers: int) -> list[int | None]:
    if window is None:
        return [None] * num_layers
    chosen = set(range(num_layers)) if layers is None else set(layers)
    return [window if i in chosen else None for i in range(num_layers)]


def window_masks(
    attention_mask: torch.Tensor | None, t: int, window: int | None, device: torch.device,
    cache: KVCache | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """(full mask, sliding-window mask, positions) for a decoder forward of T tokens.

    A None mask means plain causal attention (SDPA's fused kernel). Without a cache, a window at least as
    long as the sequence never hides a key, so it takes the full mask. Positions are the cache's when
    decoding, else counted along the padding mask (left padding), else 0..T-1.
    """
    if cache is not None:
        mask, positions = cache.begin(attention_mask, t)  # (B, 1, T, S), (B, T)
        return mask, (cache.window_mask(window) if window is not None else None), positions
    if attention_mask is None:
        positions = torch.arange(t, device=device)[None]  # (1, T)
    else:
        positions = positions_from_mask(attention_mask)  # (B, T)
    if attention_mask is not None and bool((attention_mask == 1).all()):
        attention_mask = None  # no padding: SDPA's causal kernel beats an explicit (B, 1, T, T) mask
    mask = None if attention_mask is None else causal_padding_mask(attention_mask)
    if window is None or window >= t:
        return mask, mask, positions
    if attention_mask is None:
        return mask, sliding_window_mask(t, t, window, device=device)[None, None], positions
    return mask, causal_padding_mask(attention_mask, window), positions


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.dropout = cfg.dropout
        self.window = cfg.layer_windows()[layer]
        qkv_bias = cfg.attention_bias or cfg.qkv_bias
        self.q_proj = nn.Linear(cfg.d_model, cfg.num_heads * cfg.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.num_kv_heads * cfg.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.num_kv_heads * cfg.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.d_model, bias=cfg.attention_bias)
        self.q_norm = RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, eps=cfg.norm_eps) if cfg.qk_norm else None
        self.prefix: Prefix | None = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
    ) -> torch.Tensor:
        q = split_heads(self.q_proj(x), self.num_heads)  # (B, H, T, Dh)
        k = split_heads(self.k_proj(x), self.num_kv_heads)  # (B, Hkv, T, Dh)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
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
        init_gpt2(self, config.init_std)  # GPT-2's scheme, residual scaling included, as gpt.py

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


def llama_lm(config: LlamaConfig) -> TaskModel:
    """Llama causal LM: backbone + LM head (untied unless `tie_embeddings`)."""
    backbone = LlamaModel(config)
    tied = backbone.embed_tokens if config.tie_embeddings else None
    head = LMHead(config.d_model, config.vocab_size, bias=False, tied_to=tied)
    if tied is None:
        nn.init.normal_(head.lm_head.weight, std=config.init_std)
    return TaskModel(backbone, head)
