"""IA3 (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context
Learning", sec. 3.3): learned vectors that rescale the keys, the values and the feed-forward activations.

l_k ⊙ k, l_v ⊙ v and down(l_ff ⊙ act(...)), all vectors starting at one, so the model at initialization
is the base model. Only D + D + F numbers per block train, fewer than LoRA; the rescaling is linear, so
it merges into the projection weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.peft import core


@dataclass
class IA3Config:
    targets: str = field(default="k_proj,v_proj,down_proj", metadata={"help": "modules to rescale"})
    feedforward: str = field(
        default="down_proj", metadata={"help": "targets whose input (the FFN activation) is rescaled"}
    )


class IA3Vector(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(size))


class IA3Linear(core.LinearHost):
    """A frozen projection with a learned rescaling of its output (keys, values) or input (FFN)."""

    def __init__(self, base: nn.Linear, on_input: bool):
        super().__init__(base)
        self.on_input = on_input

    def add(self, name: str, where: str) -> None:
        core.check_new_name(self, name, where)
        size = self.in_features if self.on_input else self.out_features
        self.adapters[name] = IA3Vector(size).to(self.base.weight.device, self.base.weight.dtype)
        self.active = name

    def merge(self) -> None:
        # Input scaling: W (l ⊙ x) = (W diag l) x. Output scaling: l ⊙ (W x + b) = (diag l W) x + l ⊙ b.
        if self.merged or self.active is None:
            return
        scale = self.adapters[self.active].scale.detach()
        with torch.no_grad():
            if self.on_input:
                self.base.weight.mul_(scale[None, :])
            else:
                self.base.weight.mul_(scale[:, None])
                if self.base.bias is not None:
                    self.base.bias.mul_(scale)
        self.merged = True

    def unmerge(self) -> None:
        if not self.merged:
            return
        scale = self.adapters[self.active].scale.detach()
        if bool((scale == 0).any()):
            raise ConfigError("ia3: cannot unmerge a rescaling vector with zeros")
        with torch.no_grad():
            if self.on_input:
                self.base.weight.div_(scale[None, :])
            else:
                self.base.weight.div_(scale[:, None])
                if self.base.bias is not None:
                    self.base.bias.div_(scale)
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled or self.merged or self.active is None:
            return self.base(x)
        scale = self.adapters[self.active].scale
        if self.on_input:
            return self.base(x * scale)
        return self.base(x) * scale


def apply_ia3(model: nn.Module, cfg: IA3Config | None = None, name: str = "default") -> nn.Module:
    """Attach IA3 rescaling vectors `name`; only they train."""
    cfg = cfg or IA3Config()
    feedforward = core.split_patterns(cfg.feedforward)
    for where in core.find_targets(model, cfg.targets, "ia3"):
        module = model.get_submodule(where)
        if not isinstance(module, IA3Linear):
            if core.is_host(module):
                raise ConfigError(f"ia3: {where!r} already holds a different kind of adapter")
            on_input = any(core.matches(where, p) for p in feedforward)
            module = IA3Linear(module, on_input)
            core.replace_module(model, where, module)
        module.add(name, where)
    core.set_active_adapter(model, name)
    return model


def merge_ia3(model: nn.Module) -> None:
    for _, host in core.hosts(model):
        if isinstance(host, IA3Linear):
            host.merge()


def config_dict(cfg: IA3Config) -> dict:
    return asdict(cfg)
