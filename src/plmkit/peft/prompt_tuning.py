"""Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning").

n learned "virtual token" embeddings go in front of the input embeddings; the model itself is frozen.
The wrapper replaces the backbone: it embeds `input_ids`, prepends the prompt through `inputs_embeds`,
extends the attention mask with n ones (positions follow from the mask, so the real tokens sit after
the prompt, also when rows are left-padded), runs the frozen backbone, and drops the n prompt
positions from its output, so heads and losses see the same (B, T, D) as without prompt tuning.
In an encoder-decoder the prompt goes in front of the source; the decoder output is unchanged in shape.
Initializing from the embeddings of a real text (sec. 3.2, "class label" / vocabulary init) trains
faster than random init; then, before training, the model behaves as if that text were typed in front.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.peft import core


@dataclass
class PromptTuningConfig:
    num_tokens: int = field(default=20, metadata={"help": "virtual tokens prepended to every input"})
    init_text: str = field(default="", metadata={"help": "init from this text's embeddings ('': random)"})

    def __post_init__(self) -> None:
        if self.num_tokens <= 0:
            raise ConfigError(f"PromptTuningConfig.num_tokens must be positive, got {self.num_tokens}")


class SoftPrompt(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)  # (n, D)


class PromptTunedBackbone(nn.Module):
    """A frozen backbone behind named soft prompts; same forward signature and output shape as the base."""

    is_adapter_host = True

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.adapters = nn.ModuleDict()
        self.active: str | None = None
        self.disabled = False

    @property
    def config(self) -> Any:
        return self.base.config

    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.base.embed_tokens

    @property
    def embed_scale(self) -> float:
        # BART with scale_embedding multiplies token embeddings by sqrt(D) before they become inputs_embeds.
        return getattr(self.base, "embed_scale", 1.0)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if self.disabled or self.active is None:
            return self.base(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                             **kwargs)
        if kwargs.get("cache") is not None:
            raise ConfigError("prompt tuning: decoding with a KV cache is not supported; pass cache=None")
        if inputs_embeds is None:
            if input_ids is None:
                raise ConfigError("prompt tuning: needs input_ids or inputs_embeds")
            inputs_embeds = self.base.embed_tokens(input_ids) * self.embed_scale  # (B, T, D)
        b, t, _ = inputs_embeds.shape
        prompt = self.adapters[self.active].weight  # (n, D)
        n = prompt.shape[0]
        inputs_embeds = torch.cat([prompt.to(inputs_embeds.dtype).expand(b, -1, -1), inputs_embeds], dim=1)
        if attention_mask is None:
            attention_mask = torch.ones(b, t, dtype=torch.long, device=inputs_embeds.device)
        ones = torch.ones(b, n, dtype=attention_mask.dtype, device=attention_mask.device)
        attention_mask = torch.cat([ones, attention_mask], dim=1)  # (B, n+T)
        if position_ids is not None:
            prompt_pos = torch.arange(n, device=position_ids.device).expand(b, -1)
            kwargs["position_ids"] = torch.cat([prompt_pos, position_ids + n], dim=1)
        if kwargs.get("token_type_ids") is not None:
            tt = kwargs["token_type_ids"]
            kwargs["token_type_ids"] = torch.cat([tt.new_zeros(b, n), tt], dim=1)
        hidden = self.base(attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs)
        if self.is_encoder_decoder:
            return hidden  # decoder states (B, T, D): the prompt only lengthened the source
        return hidden[:, n:]  # (B, T, D): the prompt positions are not outputs

    @property
    def is_encoder_decoder(self) -> bool:
        return isinstance(getattr(self.base, "decoder", None), nn.Module)


def apply_prompt_tuning(model: nn.Module, cfg: PromptTuningConfig | None = None, name: str = "default",
                        tokenizer: Any = None, init_ids: list[int] | None = None) -> nn.Module:
    """Put soft prompt `name` in front of every input; returns the model (a new wrapper when `model` is a
    bare backbone, otherwise the same model with its `backbone` wrapped)."""
    cfg = cfg or PromptTuningConfig()
    has_backbone = isinstance(getattr(model, "backbone", None), nn.Module)
    backbone = model.backbone if has_backbone else model
    if not isinstance(backbone, PromptTunedBackbone):
        if not isinstance(getattr(backbone, "embed_tokens", None), nn.Embedding):
            raise ConfigError("prompt tuning: the backbone has no embed_tokens embedding")
        backbone = PromptTunedBackbone(backbone)
        if has_backbone:
            model.backbone = backbone
        else:
            model = backbone
    core.check_new_name(backbone, name, "backbone")
    table = backbone.embed_tokens.weight.detach()
    if cfg.init_text and init_ids is None:
        if tokenizer is None:
            raise ConfigError("prompt tuning: init_text needs a tokenizer")
        init_ids = tokenizer.encode(cfg.init_text, add_special_tokens=False)
    if init_ids:
        ids = torch.tensor(init_ids, device=table.device)
        if int(ids.max()) >= table.shape[0] or int(ids.min()) < 0:
            raise ConfigError(f"prompt tuning: init token id out of range for vocabulary {table.shape[0]}")
        # Lester et al. repeat the text when it is shorter than the prompt.
        ids = ids.repeat((cfg.num_tokens + len(ids) - 1) // len(ids))[: cfg.num_tokens]
        weight = table[ids] * backbone.embed_scale  # prompts live in the inputs_embeds space
    else:
        weight = torch.randn(cfg.num_tokens, table.shape[1], device=table.device, dtype=table.dtype)
        weight = weight * table.float().std().to(table.dtype)
    backbone.adapters[name] = SoftPrompt(weight)
    core.set_active_adapter(model, name)
    return model


def config_dict(cfg: PromptTuningConfig) -> dict:
    return asdict(cfg)
