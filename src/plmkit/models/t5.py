"""T5 (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer").

An encoder-decoder that casts every task as text in, text out. The architecture choices, top to bottom:
- no absolute positions: a learned scalar bias per head added to the attention logits, indexed by the
  *relative* distance key - query put into log-spaced buckets (sec. 2.1). The bias table lives in the
  first layer of each stack and that layer's bias is shared by all layers of the stack; the encoder's
  buckets are bidirectional, the decoder's look only backwards.
- no 1/sqrt(Dh) attention scaling (Mesh TensorFlow folds it into the initialization);
- RMSNorm without bias or mean subtraction, pre-norm, plus a final norm per stack;
- feed-forward: ReLU (T5 v1.0) or gated-GELU (v1.1: gelu_tanh(gate_proj x) * up_proj x);
- no biases anywhere; one embedding shared by encoder, decoder and (v1.0) the output layer, where the
  decoder output is multiplied by d_model^-0.5 before the tied projection (Mesh TF's convention).

`T5Model.forward` returns decoder hidden states (B, T, D) (rescaled when `scale_decoder_outputs`);
`t5_lm(cfg)` puts the LM head on it. `encode` and `decode` run the two halves, which generation uses to
run the encoder once.

Shape legend: B batch, S source length, T target length, D model width, H heads, Dh head width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.errors import ConfigError
from plmkit.models.heads import LMHead, TaskModel
from plmkit.models.layers import (
    Prefix,
    RMSNorm,
    attention,
    causal_padding_mask,
    merge_heads,
    prepend_prefix,
    split_heads,
)
from plmkit.models.layers import shift_right as shift_right  # re-exported: plmkit.models.t5.shift_right
from plmkit.models.seq2seq_generation import Seq2SeqCache

FEED_FORWARDS = ("relu", "gated-gelu")


@dataclass
class T5Config:
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64  # head width; T5 does not require d_model == num_heads * d_kv
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None  # None: num_layers
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout: float = 0.1
    norm_eps: float = 1e-6
    feed_forward: str = "relu"  # "relu" (v1.0) or "gated-gelu" (v1.1)
    tie_embeddings: bool = True  # lm_head shares the embedding matrix
    scale_decoder_outputs: bool = True  # multiply decoder output by d_model^-0.5 (v1.0)
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0  # T5 starts decoding from the pad token
    init_factor: float = 1.0
    model_type: str = "t5"

    def __post_init__(self) -> None:
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        for name in (
            "vocab_size",
            "d_model",
            "d_kv",
            "d_ff",
            "num_layers",
            "num_decoder_layers",
            "num_heads",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"T5Config.{name} must be positive, got {getattr(self, name)}")
        if self.feed_forward not in FEED_FORWARDS:
            raise ConfigError(
                f"T5Config.feed_forward {self.feed_forward!r} is not one of {', '.join(FEED_FORWARDS)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"T5Config.dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.d_kv


def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """Bucket of each key - query distance (sec. 2.1): exact for small distances, log-spaced up to
    max_distance, one bucket beyond. Bidirectional stacks spend half the buckets on each direction;
    causal ones map every future distance to bucket 0."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = -relative_position.clamp(max=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    large = (
        max_exact
        + (
            torch.log(distance.float() / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).long()
    )
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean keep-mask -> 0 / most-negative float, so it can be summed with the position bias."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


class T5Attention(nn.Module):
    """Self- or cross-attention without scaling. The first self-attention of a stack owns the
    relative-position table (`relative_attention_bias`)."""

    def __init__(self, cfg: T5Config, layer: int, has_relative_bias: bool = False, causal: bool = False):
        super().__init__()
        self.layer = layer
        self.num_heads = cfg.num_heads
        self.causal = causal
        self.dropout = cfg.dropout
        self.num_buckets = cfg.relative_attention_num_buckets
        self.max_distance = cfg.relative_attention_max_distance
        inner = cfg.num_heads * cfg.d_kv
        self.q_proj = nn.Linear(cfg.d_model, inner, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, inner, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, inner, bias=False)
        self.o_proj = nn.Linear(inner, cfg.d_model, bias=False)
        self.relative_attention_bias = (
            nn.Embedding(self.num_buckets, cfg.num_heads) if has_relative_bias else None
        )
        self.prefix: Prefix | None = None

    def position_bias(self, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
        """query_pos (T,), key_pos (S,) -> bias (1, H, T, S)."""
        relative = key_pos[None, :] - query_pos[:, None]  # (T, S)
        buckets = relative_position_bucket(relative, not self.causal, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]

    def forward(
        self,
        x: torch.Tensor,
        bias_mask: torch.Tensor,
        kv_input: torch.Tensor | None = None,
        cache: Seq2SeqCache | None = None,
    ) -> torch.Tensor:
        """x (B, T, D); bias_mask: position bias + additive mask (B or 1, H or 1, T, S); kv_input: the
        encoder output for cross-attention (None: self-attention)."""
        q = split_heads(self.q_proj(x), self.num_heads)  # (B, H, T, Dh)
        if kv_input is None:
            k = split_heads(self.k_proj(x), self.num_heads)
            v = split_heads(self.v_proj(x), self.num_heads)
            if cache is not None:
                k, v = cache.self_attn.update(self.layer, k, v)  # (B, H, S, Dh)
        elif cache is not None and cache.cross[self.layer] is not None:
            k, v = cache.cross[self.layer]
        else:
            k = split_heads(self.k_proj(kv_input), self.num_heads)  # (B, H, S, Dh)
            v = split_heads(self.v_proj(kv_input), self.num_heads)
            if cache is not None:
                cache.cross[self.layer] = (k, v)
        k, v, bias_mask = prepend_prefix(self.prefix, k, v, bias_mask)
        dropout_p = self.dropout if self.training else 0.0
        out = attention(q, k, v, bias_mask.to(q.dtype), dropout_p=dropout_p, scale=1.0)
        return self.o_proj(merge_heads(out))


class T5MLP(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.gated = cfg.feed_forward == "gated-gelu"
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False) if self.gated else None
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            # v1.1 (Shazeer 2020, "GLU Variants"): GELU with the tanh approximation gates a linear branch.
            h = F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x)
        else:
            h = F.relu(self.up_proj(x))
        return self.down_proj(self.dropout(h))


class T5Block(nn.Module):
    """Pre-norm block: self-attention, (decoder only) cross-attention, feed-forward, each residual."""

    def __init__(self, cfg: T5Config, layer: int, is_decoder: bool):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = T5Attention(cfg, layer, has_relative_bias=layer == 0, causal=is_decoder)
        if is_decoder:
            self.cross_attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.cross_attn = T5Attention(cfg, layer)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = T5MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        self_bias: torch.Tensor,
        encoder_hidden: torch.Tensor | None = None,
        cross_bias: torch.Tensor | None = None,
        cache: Seq2SeqCache | None = None,
    ) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.attn_norm(x), self_bias, cache=cache))
        if encoder_hidden is not None:
            h = self.cross_attn(self.cross_attn_norm(x), cross_bias, kv_input=encoder_hidden, cache=cache)
            x = x + self.dropout(h)
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class T5Stack(nn.Module):
    """The encoder or the decoder: blocks, then a final RMSNorm. Embeddings are the model's."""

    def __init__(self, cfg: T5Config, is_decoder: bool):
        super().__init__()
        n = cfg.num_decoder_layers if is_decoder else cfg.num_layers
        self.layers = nn.ModuleList(T5Block(cfg, i, is_decoder) for i in range(n))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)


class T5Model(nn.Module):
    """T5 encoder-decoder: `forward` -> decoder hidden states (B, T, D); `encode`, `decode` separately."""

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, is_decoder=False)
        self.decoder = T5Stack(config, is_decoder=True)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # Mesh TF's initialization, which stands in for the missing 1/sqrt(Dh) attention scaling.
        f, d = self.config.init_factor, self.config.d_model
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=f * (1.0 if module is self.embed_tokens else d**-0.5))
        elif isinstance(module, T5Attention):
            inner = self.config.num_heads * self.config.d_kv
            nn.init.normal_(module.q_proj.weight, std=f * (d * self.config.d_kv) ** -0.5)
            nn.init.normal_(module.k_proj.weight, std=f * d**-0.5)
            nn.init.normal_(module.v_proj.weight, std=f * d**-0.5)
            nn.init.normal_(module.o_proj.weight, std=f * inner**-0.5)
        elif isinstance(module, T5MLP):
            for proj in (module.gate_proj, module.up_proj):
                if proj is not None:
                    nn.init.normal_(proj.weight, std=f * d**-0.5)
            nn.init.normal_(module.down_proj.weight, std=f * self.config.d_ff**-0.5)

    def encode(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Source tokens (or embeddings, for prompt tuning) -> encoder output (B, S, D)."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ConfigError("T5Model needs input_ids or inputs_embeds")
            inputs_embeds = self.embed_tokens(input_ids)
        b, s, _ = inputs_embeds.shape
        if attention_mask is None:
            attention_mask = torch.ones(b, s, dtype=torch.long, device=inputs_embeds.device)
        pos = torch.arange(s, device=inputs_embeds.device)
        bias = self.encoder.layers[0].self_attn.position_bias(pos, pos)  # (1, H, S, S)
        bias = bias + additive_mask(attention_mask.bool()[:, None, None, :], bias.dtype)  # (B, H, S, S)
        x = self.encoder.dropout(inputs_embeds)
        for block in self.encoder.layers:
            x = block(x, bias)
        return self.encoder.dropout(self.encoder.norm(x))  # (B, S, D)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        cache: Seq2SeqCache | None = None,
    ) -> torch.Tensor:
        """Target tokens (B, T) attending to `encoder_hidden` (B, S, D) -> (B, T, D).

        `attention_mask` is the source mask. With `cache`, T new tokens extend the cached ones.
        """
        x = self.decoder.dropout(self.embed_tokens(decoder_input_ids))
        b, t = decoder_input_ids.shape
        device = x.device
        first = self.decoder.layers[0].self_attn
        if cache is not None:
            mask, positions = cache.self_attn.begin(decoder_attention_mask, t)  # (B, 1, T, Smax), (B, T)
            slots = torch.arange(cache.self_attn.max_length, device=device)
            self_bias = first.position_bias(positions[0], slots) + additive_mask(mask, x.dtype)
        else:
            if decoder_attention_mask is None:
                decoder_attention_mask = torch.ones(b, t, dtype=torch.long, device=device)
            pos = torch.arange(t, device=device)
            self_bias = first.position_bias(pos, pos) + additive_mask(
                causal_padding_mask(decoder_attention_mask), x.dtype
            )
        s = encoder_hidden.shape[1]
        if attention_mask is None:
            attention_mask = torch.ones(b, s, dtype=torch.long, device=device)
        cross_bias = additive_mask(attention_mask.bool()[:, None, None, :], x.dtype)  # (B, 1, 1, S)
        for block in self.decoder.layers:
            x = block(x, self_bias, encoder_hidden, cross_bias, cache)
        if cache is not None:
            cache.self_attn.end(t)
        x = self.decoder.dropout(self.decoder.norm(x))
        if self.config.scale_decoder_outputs:
            # Mesh TF rescales before the tied output projection so logits keep unit scale.
            x = x * self.config.d_model**-0.5
        return x  # (B, T, D)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden: torch.Tensor | None = None,
        cache: Seq2SeqCache | None = None,
    ) -> torch.Tensor:
        if decoder_input_ids is None:
            raise ConfigError("T5Model needs decoder_input_ids (labels shifted right: shift_right)")
        if encoder_hidden is None:
            encoder_hidden = self.encode(input_ids, attention_mask, inputs_embeds)
        return self.decode(decoder_input_ids, encoder_hidden, attention_mask, decoder_attention_mask, cache)


def t5_lm(config: T5Config) -> TaskModel:
    """T5 for conditional generation: backbone + LM head (tied to the shared embedding unless untied)."""
    backbone = T5Model(config)
    tied = backbone.embed_tokens if config.tie_embeddings else None
    head = LMHead(config.d_model, config.vocab_size, bias=False, tied_to=tied)
    if tied is None:
        nn.init.normal_(head.lm_head.weight, std=config.init_factor)
    return TaskModel(backbone, head)
