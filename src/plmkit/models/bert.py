"""BERT (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers") and RoBERTa
(Liu et al. 2019, "RoBERTa: A Robustly Optimized BERT Pretraining Approach").

A bidirectional encoder: every token attends to every real token of the sequence (padding is masked
as a key, never causally). The architecture choices, top to bottom: learned absolute position
embeddings plus token-type (segment) embeddings, summed with the token embeddings and normalized
(sec. 3, fig. 2); post-LN blocks (LayerNorm *after* each residual sum, as in the original Transformer);
exact GELU (erf) in a 4x wide feed-forward; biases everywhere; LayerNorm eps 1e-12.

RoBERTa keeps the architecture and changes the training (no NSP, dynamic masking, bigger batches,
byte-level BPE). One inherited quirk from fairseq: position ids start after the padding index,
`padding_idx + 1 + (number of real tokens so far)`, so its position table has two extra rows.

Pretraining heads live here too: the MLM head (dense -> activation -> LayerNorm -> decoder tied to the
token embeddings, plus an output bias), and the pre-training head that adds the pooler
(dense + tanh on [CLS]) and the two-way next-sentence (BERT) or sentence-order (ALBERT) classifier.
`plmkit.models.albert` and `plmkit.models.distilbert` build on the block defined here.

Shape legend: B batch, T length, D model width, E embedding width, H heads, Dh head width, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.errors import ConfigError
from plmkit.models.heads import TaskModel
from plmkit.models.layers import Prefix, attention, merge_heads, padding_mask, prepend_prefix, split_heads

# Activation names as Hugging Face configs spell them. BERT uses the exact erf GELU; ALBERT's
# "gelu_new" is the tanh approximation.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def check_activation(owner: str, name: str) -> None:
    if name not in ACTIVATIONS:
        raise ConfigError(f"{owner}.activation {name!r} is not one of {', '.join(ACTIVATIONS)}")


def check_positive(owner: str, config: Any, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(config, name) <= 0:
            raise ConfigError(f"{owner}.{name} must be positive, got {getattr(config, name)}")
    d_model, num_heads = config.d_model, config.num_heads
    if d_model % num_heads:
        raise ConfigError(f"{owner}.d_model ({d_model}) must be divisible by num_heads ({num_heads})")


@dataclass
class BertConfig:
    vocab_size: int = 30522
    d_model: int = 768
    num_layers: int = 12
    num_heads: int = 12
    d_ff: int | None = None  # None: 4 * d_model
    max_positions: int = 512
    type_vocab_size: int = 2  # RoBERTa: 1 (a single segment embedding, added everywhere)
    activation: str = "gelu"
    dropout: float = 0.1
    attention_dropout: float = 0.1
    norm_eps: float = 1e-12
    pad_token_id: int = 0
    init_std: float = 0.02
    add_pooler: bool = True  # keep a checkpoint's pooler (dense + tanh on [CLS]) in the backbone
    model_type: str = "bert"  # "bert" or "roberta" (positions start after the padding index)

    def __post_init__(self) -> None:
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.model_type not in ("bert", "roberta"):
            raise ConfigError(f"BertConfig.model_type must be 'bert' or 'roberta', got {self.model_type!r}")
        check_positive("BertConfig", self, ("vocab_size", "d_model", "num_layers", "num_heads", "d_ff",
                                            "max_positions", "type_vocab_size"))
        check_activation("BertConfig", self.activation)
        if self.position_offset >= self.max_positions:
            raise ConfigError(f"BertConfig.max_positions ({self.max_positions}) leaves no room after "
                              f"the padding index ({self.pad_token_id})")

    @property
    def position_offset(self) -> int:
        """First position id of a real token: 0 for BERT, pad_token_id + 1 for RoBERTa (fairseq)."""
        return self.pad_token_id + 1 if self.model_type == "roberta" else 0


class EncoderAttention(nn.Module):
    """Bidirectional multi-head self-attention; padding is masked as a key only."""

    def __init__(self, d_model: int, num_heads: int, attention_dropout: float, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.o_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.prefix: Prefix | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = split_heads(self.q_proj(x), self.num_heads)  # (B, H, T, Dh)
        k = split_heads(self.k_proj(x), self.num_heads)
        v = split_heads(self.v_proj(x), self.num_heads)
        k, v, mask = prepend_prefix(self.prefix, k, v, mask)
        dropout_p = self.attention_dropout if self.training else 0.0
        out = attention(q, k, v, mask, dropout_p=dropout_p)  # (B, H, T, Dh)
        return self.dropout(self.o_proj(merge_heads(out)))


class EncoderMLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation: str, dropout: float):
        super().__init__()
        self.up_proj = nn.Linear(d_model, d_ff)
        self.down_proj = nn.Linear(d_ff, d_model)
        self.activation = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(self.activation(self.up_proj(x))))


class EncoderBlock(nn.Module):
    """Post-LN block (Vaswani et al. 2017): x = LN(x + attn(x)); x = LN(x + mlp(x)).

    BERT, RoBERTa, ALBERT and DistilBERT all share this block; `attn_norm` and `mlp_norm` are the
    LayerNorms *after* each sub-block.
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, activation: str, dropout: float,
                 attention_dropout: float, norm_eps: float):
        super().__init__()
        self.attn = EncoderAttention(d_model, num_heads, attention_dropout, dropout)
        self.attn_norm = nn.LayerNorm(d_model, eps=norm_eps)
        self.mlp = EncoderMLP(d_model, d_ff, activation, dropout)
        self.mlp_norm = nn.LayerNorm(d_model, eps=norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, mask))
        return self.mlp_norm(x + self.mlp(x))


class Pooler(nn.Module):
    """BERT's pooled output, the NSP classifier's input: tanh(dense(h_[CLS])). (B, T, D) -> (B, D)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


def init_encoder_weights(module: nn.Module, std: float) -> None:
    """BERT's initialization: N(0, std) weights, zero biases, LayerNorm at identity."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def encoder_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) 1/0 -> boolean (B, 1, 1, T) key mask; None when there is no padding to hide."""
    return None if attention_mask is None else padding_mask(attention_mask)


class BertModel(nn.Module):
    """The BERT / RoBERTa backbone: token + position + token-type embeddings, LayerNorm, post-LN blocks
    -> last hidden states (B, T, D). The pooler, when present, is not applied in `forward`; call
    `model.pooler(hidden)` for Hugging Face's pooled output."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_token_id)
        self.embed_positions = nn.Embedding(c.max_positions, c.d_model)
        self.embed_token_types = nn.Embedding(c.type_vocab_size, c.d_model)
        self.embed_norm = nn.LayerNorm(c.d_model, eps=c.norm_eps)
        self.dropout = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(
            EncoderBlock(c.d_model, c.num_heads, c.d_ff, c.activation, c.dropout, c.attention_dropout,
                         c.norm_eps)
            for _ in range(c.num_layers)
        )
        self.pooler = Pooler(c.d_model) if c.add_pooler else None
        self.apply(lambda m: init_encoder_weights(m, c.init_std))

    def default_positions(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, b: int, t: int,
        device: torch.device,
    ) -> torch.Tensor:
        offset = self.config.position_offset
        if self.config.model_type == "bert":
            return torch.arange(t, device=device)[None].expand(b, t)
        # RoBERTa (fairseq): real tokens count from padding_idx + 1, padding sits at padding_idx.
        if input_ids is not None:
            real = input_ids.ne(self.config.pad_token_id).long()
        elif attention_mask is not None:
            real = attention_mask.long()
        else:
            return torch.arange(offset, offset + t, device=device)[None].expand(b, t)
        return real.cumsum(-1) * real + self.config.pad_token_id  # (B, T)

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
                raise ConfigError("BertModel needs input_ids or inputs_embeds")
            inputs_embeds = self.embed_tokens(input_ids)  # (B, T, D)
        b, t, _ = inputs_embeds.shape
        if position_ids is None:
            position_ids = self.default_positions(input_ids, attention_mask, b, t, inputs_embeds.device)
        if token_type_ids is None:
            token_type_ids = torch.zeros(b, t, dtype=torch.long, device=inputs_embeds.device)
        x = inputs_embeds + self.embed_positions(position_ids) + self.embed_token_types(token_type_ids)
        x = self.dropout(self.embed_norm(x))
        mask = encoder_mask(attention_mask)
        for block in self.layers:
            x = block(x, mask)
        return x  # (B, T, D)


class MaskedLMHead(nn.Module):
    """Hidden states -> masked-token logits (B, T, V): dense (D -> E), activation, LayerNorm(E), then
    `lm_head` (E -> V) whose matrix is the token embedding matrix and which keeps its own bias
    (BERT sec. A.1; ALBERT projects down to its embedding width E first)."""

    def __init__(self, d_model: int, vocab_size: int, activation: str, norm_eps: float,
                 tied_to: nn.Embedding | None = None, d_embed: int | None = None):
        super().__init__()
        d_embed = d_embed or d_model
        self.dense = nn.Linear(d_model, d_embed)
        self.activation_name = activation
        self.activation = ACTIVATIONS[activation]
        self.norm = nn.LayerNorm(d_embed, eps=norm_eps)
        self.lm_head = nn.Linear(d_embed, vocab_size)
        nn.init.zeros_(self.lm_head.bias)
        if tied_to is not None:
            self.lm_head.weight = tied_to.weight

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.lm_head(self.norm(self.activation(self.dense(hidden))))  # (B, T, V)


@dataclass
class PreTrainingLogits:
    """Outputs of the pre-training head: MLM logits (B, T, V) and sentence-pair logits (B, 2)
    (NSP for BERT: 0 = is next, 1 = random; SOP for ALBERT: 0 = in order, 1 = swapped)."""

    mlm_logits: torch.Tensor
    pair_logits: torch.Tensor


class PreTrainingHead(nn.Module):
    """MLM head plus the pooler and a two-way sentence-pair classifier on the pooled [CLS]."""

    def __init__(self, mlm: MaskedLMHead, d_model: int, dropout: float = 0.0, pair_task: str = "nsp"):
        super().__init__()
        if pair_task not in ("nsp", "sop"):
            raise ConfigError(f"pair_task must be 'nsp' or 'sop', got {pair_task!r}")
        self.pair_task = pair_task  # which sentence-pair data the head is trained on
        self.mlm = mlm
        self.pooler = Pooler(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pair_classifier = nn.Linear(d_model, 2)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> PreTrainingLogits:
        pooled = self.pooler(hidden)  # (B, D)
        return PreTrainingLogits(mlm_logits=self.mlm(hidden),
                                 pair_logits=self.pair_classifier(self.dropout(pooled)))  # (B, 2)


def with_pair_head(mlm_model: TaskModel, pair_task: str) -> TaskModel:
    """An MLM model (backbone + `MaskedLMHead`) with a freshly initialized pooler and sentence-pair
    classifier added: the same weights, now trained on MLM + NSP ("nsp") or MLM + SOP ("sop")."""
    if not isinstance(mlm_model.head, MaskedLMHead):
        raise ConfigError(
            f"with_pair_head needs a model with a MaskedLMHead, got {type(mlm_model.head).__name__}"
        )
    d_model = mlm_model.backbone.config.d_model
    head = PreTrainingHead(mlm_model.head, d_model, pair_task=pair_task)
    std = mlm_model.backbone.config.init_std
    init_encoder_weights(head.pooler.dense, std)
    init_encoder_weights(head.pair_classifier, std)
    return TaskModel(mlm_model.backbone, head)


def bert_mlm_head(config: BertConfig, backbone: BertModel) -> MaskedLMHead:
    # RoBERTa's LM head always uses GELU whatever the encoder's activation (fairseq's RobertaLMHead).
    activation = "gelu" if config.model_type == "roberta" else config.activation
    head = MaskedLMHead(config.d_model, config.vocab_size, activation, config.norm_eps,
                        tied_to=backbone.embed_tokens)
    init_encoder_weights(head.dense, config.init_std)
    return head


def bert_mlm(config: BertConfig) -> TaskModel:
    """BERT/RoBERTa for masked language modelling: backbone (no pooler) + tied MLM head -> (B, T, V)."""
    config = replace(config, add_pooler=False)
    backbone = BertModel(config)
    return TaskModel(backbone, bert_mlm_head(config, backbone))


def bert_pretraining(config: BertConfig) -> TaskModel:
    """BERT with MLM + NSP heads (the original pre-training model) -> `PreTrainingLogits`."""
    config = replace(config, add_pooler=False)
    backbone = BertModel(config)
    head = PreTrainingHead(bert_mlm_head(config, backbone), config.d_model)
    init_encoder_weights(head.pooler.dense, config.init_std)
    init_encoder_weights(head.pair_classifier, config.init_std)
    return TaskModel(backbone, head)
