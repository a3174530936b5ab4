"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021, "AdapterFusion").

A small bottleneck h + up(act(down(h))) is inserted into every block, with D -> D/reduction -> D.
The up-projection starts at zero, so each adapter starts as the identity (Houlsby sec. 2.1).
Houlsby places one after the attention output projection and one after the feed-forward output;
Pfeiffer found the feed-forward one alone is as good at half the cost. Here an adapter wraps the
projection (`o_proj`, `down_proj`) and acts on its output, before dropout and the residual add.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.peft import core

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
PLACEMENTS: dict[str, str] = {"houlsby": "o_proj,down_proj", "pfeiffer": "down_proj"}


@dataclass
class BottleneckConfig:
    placement: str = field(default="houlsby", metadata={"help": "houlsby (attn + FFN) or pfeiffer (FFN)"})
    reduction: int = field(default=16, metadata={"help": "bottleneck width = model width / reduction"})
    activation: str = field(default="relu", metadata={"help": "relu, gelu, tanh or silu"})

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"BottleneckConfig.placement must be one of {', '.join(PLACEMENTS)}, "
                              f"got {self.placement!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"BottleneckConfig.activation must be one of {', '.join(ACTIVATIONS)}, "
                              f"got {self.activation!r}")
        if self.reduction <= 0:
            raise ConfigError(f"BottleneckConfig.reduction must be positive, got {self.reduction}")


class Bottleneck(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str):
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.act(self.down(h)))


class AdapterOutput(nn.Module):
    """A frozen projection whose output passes through the active bottleneck adapter."""

    is_adapter_host = True

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.adapters = nn.ModuleDict()
        self.active: str | None = None
        self.disabled = False

    def add(self, name: str, cfg: BottleneckConfig, where: str) -> None:
        core.check_new_name(self, name, where)
        dim = self.base.out_features
        hidden = dim // cfg.reduction
        if hidden < 1:
            raise ConfigError(f"adapters: reduction {cfg.reduction} leaves no bottleneck for {where!r} "
                              f"(width {dim})")
        weight = self.base.weight
        self.adapters[name] = Bottleneck(dim, hidden, cfg.activation).to(weight.device, weight.dtype)
        self.active = name

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        if self.disabled or self.active is None:
            return h
        return self.adapters[self.active](h)


def apply_adapters(model: nn.Module, cfg: BottleneckConfig | None = None, name: str = "default") -> nn.Module:
    """Attach bottleneck adapter `name` at the Houlsby or Pfeiffer places; only it trains."""
    cfg = cfg or BottleneckConfig()
    for where in core.find_targets(model, PLACEMENTS[cfg.placement], "adapters"):
        module = model.get_submodule(where)
        if not isinstance(module, AdapterOutput):
            module = AdapterOutput(module)
            core.replace_module(model, where, module)
        module.add(name, cfg, where)
    core.set_active_adapter(model, name)
    return model


def config_dict(cfg: BottleneckConfig) -> dict:
    return asdict(cfg)
