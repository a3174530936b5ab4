"""Key maps and small named transforms shared by the family converters.

A key map is declarative: `{"transformer.h.{}.ln_1.weight": "backbone.layers.{}.attn_norm.weight"}`,
where `{}` stands for a layer index. Everything that is not a rename (transposes, fused-qkv splits)
is a small named function in the family module.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from plmkit.errors import CheckpointError


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(pattern).replace(r"\{\}", r"(\d+)") + "$")


class KeyMap:
    """Two-way renaming between Hugging Face keys and plmkit keys."""

    def __init__(self, hf_to_plmkit: dict[str, str]):
        self.forward = [(_compile(a), b) for a, b in hf_to_plmkit.items()]
        self.backward = [(_compile(b), a) for a, b in hf_to_plmkit.items()]

    @staticmethod
    def _apply(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
        for pattern, target in rules:
            m = pattern.match(key)
            if m:
                return target.format(*m.groups())
        return None

    def to_plmkit(self, key: str) -> str | None:
        return self._apply(key, self.forward)

    def to_hf(self, key: str) -> str | None:
        return self._apply(key, self.backward)


def load_checked(model: nn.Module, state_dict: dict[str, torch.Tensor], origin: dict[str, str]) -> None:
    """Load strictly, naming the checkpoint key on a missing weight or a shape mismatch.

    `origin` maps each plmkit key back to the key it came from in the checkpoint. A key missing from
    the checkpoint is fine only when its parameter is tied to one that is present (a tied LM head is
    usually not stored).
    """
    params = dict(model.state_dict(keep_vars=True))
    for key, tensor in state_dict.items():
        if key not in params:
            raise CheckpointError(f"unexpected weight {origin.get(key, key)!r} in checkpoint")
        want = tuple(params[key].shape)
        if tuple(tensor.shape) != want:
            raise CheckpointError(
                f"weight {origin.get(key, key)!r} has shape {tuple(tensor.shape)} but the config "
                f"expects {want}"
            )
    present = {id(params[k]) for k in state_dict}
    for key, param in params.items():
        if key not in state_dict and id(param) not in present:
            raise CheckpointError(f"checkpoint is missing weight for {key!r}")
    with torch.no_grad():
        for key, tensor in state_dict.items():
            params[key].copy_(tensor)


def drop_tied(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep one name per shared tensor (safetensors refuses aliased tensors), the first in module order."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state_dict.items():
        ptr = tensor.data_ptr()
        if ptr in seen and tensor.numel() > 0:
            continue
        seen.add(ptr)
        out[key] = tensor
    return out
