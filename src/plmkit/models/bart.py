"""BART (Lewis et al. 2020, "BART: Denoising Sequence-to-Sequence Pre-training for Natural Language
Generation, Translation, and Comprehension").

A standard transformer encoder-decoder pretrained by reconstructing corrupted text (text infilling and
sentence permutation, sec. 2.2; see `plmkit.objectives.denoising`). The architecture choices, top to bottom:
- learned absolute positions with an offset of 2: position p reads row p + 2 of the table (fairseq
  reserved the first rows for padding), so the table has max_positions + 2 rows;
- a LayerNorm on the embeddings (`embed_norm`), optional sqrt(D) embedding scaling (off for bart-base/large);
- post-LN blocks as in the original transformer: x = norm(x + sublayer(x)), so the names `attn_norm`,
  `cross_attn_norm`, `mlp_norm` are the norms *after* each sub-block;
- GELU (exact) feed-forward, biases everywhere, 1/sqrt(Dh) attention scaling;
- one embedding shared by encoder, decoder and the LM head, plus a fixed output bias (`final_logits_bias`,
  here the LM head's bias).

`BartModel.forward` returns decoder hidden states (B, T, D); without `decoder_input_ids` it feeds the
decoder the inputs shifted right (as `BartForSequenceClassification` does). `bart_lm` and
`bart_classifier` put heads on it.

Shape legend: B batch, S source length, T target length, D model width, H heads, Dh head width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.errors import ConfigError
from plmkit.models.heads import LMHead, SequenceClassificationHead, TaskModel
from plmkit.models.layers import (
    Prefix,
    attention,
    causal_padding_mask,
    merge_heads,
    padding_mask,
    prepend_prefix,
    shift_right,
    split_heads,
)
from plmkit.models.seq2seq_generation import Seq2SeqCache

POSITION_OFFSET = 2


@dataclass
class BartConfig:
    vocab_size: int = 50265
    max_positions: int = 1024
    d_model: int = 768
    num_layers: int = 6  # encoder layers
    num_decoder_layers: int | None = None  # None: num_layers
    num_heads: int = 12
    d_ff: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    scale_embedding: bool = False
    norm_eps: float = 1e-5
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    decoder_start_token_id: int = 2
    init_std: float = 0.02
    model_type: str = "bart"

    def __post_init__(self) -> None:
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        for name in (
            "vocab_size",
            "max_positions",
            "d_model",
            "num_layers",
            "num_decoder_layers",
            "num_heads",
            "d_ff",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"BartConfig.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.num_heads:
            raise ConfigError(
                f"BartConfig.d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})"
            )
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"BartConfig.{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


class BartAttention(nn.Module):
    """Self- or cross-attention (cross when `kv_input` is given) with biases and 1/sqrt(Dh) scaling."""

    def __init__(self, cfg: BartConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads = cfg.num_heads
        self.dropout = cfg.attention_dropout
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.prefix: Prefix | None = None

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        kv_input: torch.Tensor | None = None,
        cache: Seq2SeqCache | None = None,
    ) -> torch.Tensor:
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
        k, v, mask = prepend_prefix(self.prefix, k, v, mask)
        dropout_p = self.dropout if self.training else 0.0
        return self.o_proj(merge_heads(attention(q, k, v, mask, dropout_p=dropout_p)))


class BartMLP(nn.Module):
    def __init__(self, cfg: BartConfig):
        super().__init__()
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model)
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.activation_dropout(F.gelu(self.up_proj(x))))


class BartBlock(nn.Module):
    """Post-LN block: x = norm(x + self_attn(x)); [x = norm(x + cross_attn(x, enc))]; x = norm(x + mlp(x))."""

    def __init__(self, cfg: BartConfig, layer: int, is_decoder: bool):
        super().__init__()
        self.self_attn = BartAttention(cfg, layer)
        self.attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        if is_decoder:
            self.cross_attn = BartAttention(cfg, layer)
            self.cross_attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = BartMLP(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        self_mask: torch.Tensor | None,
        encoder_hidden: torch.Tensor | None = None,
        cross_mask: torch.Tensor | None = None,
        cache: Seq2SeqCache | None = None,
    ) -> torch.Tensor:
        x = self.attn_norm(x + self.dropout(self.self_attn(x, self_mask, cache=cache)))
        if encoder_hidden is not None:
            h = self.cross_attn(x, cross_mask, kv_input=encoder_hidden, cache=cache)
            x = self.cross_attn_norm(x + self.dropout(h))
        return self.mlp_norm(x + self.dropout(self.mlp(x)))


class BartStack(nn.Module):
    """Encoder or decoder: its own position table and embedding norm, then the blocks."""

    def __init__(self, cfg: BartConfig, is_decoder: bool):
        super().__init__()
        n = cfg.num_decoder_layers if is_decoder else cfg.num_layers
        self.embed_positions = nn.Embedding(cfg.max_positions + POSITION_OFFSET, cfg.d_model)
        self.embed_norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)
        self.layers = nn.ModuleList(BartBlock(cfg, i, is_decoder) for i in range(n))
        self.dropout = nn.Dropout(cfg.dropout)

    def embed(self, token_embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = token_embeds + self.embed_positions(positions + POSITION_OFFSET)
        return self.dropout(self.embed_norm(x))


class BartModel(nn.Module):
    """BART encoder-decoder: `forward` -> decoder hidden states (B, T, D); `encode`, `decode` separately."""

    def __init__(self, config: BartConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_token_id)
        self.embed_scale = config.d_model**0.5 if config.scale_embedding else 1.0
        self.encoder = BartStack(config, is_decoder=False)
        self.decoder = BartStack(config, is_decoder=True)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            nn.init.zeros_(module.weight[module.padding_idx])

    def encode(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Source tokens (or embeddings, for prompt tuning) -> encoder output (B, S, D)."""
        if inputs_embeds is None:
            if input_ids is None:
                raise ConfigError("BartModel needs input_ids or inputs_embeds")
            inputs_embeds = self.embed_tokens(input_ids) * self.embed_scale
        s = inputs_embeds.shape[1]
        x = self.encoder.embed(inputs_embeds, torch.arange(s, device=inputs_embeds.device)[None])
        mask = None if attention_mask is None else padding_mask(attention_mask)  # (B, 1, 1, S)
        for block in self.encoder.layers:
            x = block(x, mask)
        return x  # (B, S, D)

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
        t = decoder_input_ids.shape[1]
        embeds = self.embed_tokens(decoder_input_ids) * self.embed_scale
        if cache is not None:
            self_mask, positions = cache.self_attn.begin(decoder_attention_mask, t)  # (B,1,T,Smax), (B,T)
        else:
            positions = torch.arange(t, device=embeds.device)[None]
            if decoder_attention_mask is None:
                self_mask = None  # plain causal attention
            else:
                self_mask = causal_padding_mask(decoder_attention_mask)
        if self_mask is None:
            self_mask = torch.ones(t, t, dtype=torch.bool, device=embeds.device).tril()[None, None]
        x = self.decoder.embed(embeds, positions)
        cross_mask = None if attention_mask is None else padding_mask(attention_mask)
        for block in self.decoder.layers:
            x = block(x, self_mask, encoder_hidden, cross_mask, cache)
        if cache is not None:
            cache.self_attn.end(t)
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
            if input_ids is None:
                raise ConfigError("BartModel needs decoder_input_ids when it gets inputs_embeds")
            decoder_input_ids = shift_right(
                input_ids, self.config.decoder_start_token_id, self.config.pad_token_id
            )
        if encoder_hidden is None:
            encoder_hidden = self.encode(input_ids, attention_mask, inputs_embeds)
        return self.decode(decoder_input_ids, encoder_hidden, attention_mask, decoder_attention_mask, cache)


def bart_lm(config: BartConfig) -> TaskModel:
    """BART for conditional generation: LM head tied to the shared embedding, with `final_logits_bias`."""
    backbone = BartModel(config)
    head = LMHead(config.d_model, config.vocab_size, bias=True, tied_to=backbone.embed_tokens)
    nn.init.zeros_(head.lm_head.bias)
    return TaskModel(backbone, head)


def bart_classifier(config: BartConfig, num_labels: int, dropout: float = 0.0) -> TaskModel:
    """BART for sequence classification: the decoder state at the final EOS -> dense -> tanh -> classes.

    Transformers reads the hidden state at the last EOS token; with inputs that end in EOS and right
    padding that is the last real token, which "last" pooling finds from the attention mask.
    """
    backbone = BartModel(config)
    head = SequenceClassificationHead(
        config.d_model,
        num_labels,
        pooling="last",
        activation="tanh",
        dropout=dropout,
        dropout_before_dense=True,
    )
    return TaskModel(backbone, head)
