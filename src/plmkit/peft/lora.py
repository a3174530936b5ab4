"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A frozen linear map W gets a trainable low-rank update: W' = W + (α/r)·B·A with A (r, in) and
B (out, r). A starts Kaiming-uniform and B at zero (sec. 4.1), so the model at initialization is the
base model. rsLoRA (Kalajdzievski 2023) scales by α/√r instead, which keeps the update's magnitude
stable as r grows. Because the update is linear it can be merged into W for inference at no cost.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.peft import core


@dataclass
class LoRAConfig:
    r: int = field(default=8, metadata={"help": "rank of the update B·A"})
    alpha: float = field(default=16.0, metadata={"help": "scale numerator: update scaled by alpha/r"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA path input"})
    targets: str = field(
        default="q_proj,v_proj",
        metadata={"help": "comma-separated module names or globs, or 'all-linear'"},
    )
    rslora: bool = field(default=False, metadata={"help": "scale by alpha/sqrt(r) (rsLoRA)"})

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ConfigError(f"LoRAConfig.r must be positive, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRAConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)


class LoRAWeights(nn.Module):
    """One named low-rank update: lora_A (r, in), lora_B (out, r)."""

    def __init__(self, in_features: int, out_features: int, r: int, scale: float, dropout: float):
        super().__init__()
        self.lora_A = nn.Linear(in_features, r, bias=False)
        self.lora_B = nn.Linear(r, out_features, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self) -> torch.Tensor:
        return self.scale * (self.lora_B.weight @ self.lora_A.weight)  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_B(self.lora_A(self.dropout(x))) * self.scale


class LoRALinear(core.LinearHost):
    """A frozen `base` nn.Linear plus named LoRA updates, one of them active."""

    def add(self, name: str, cfg: LoRAConfig, where: str) -> None:
        core.check_new_name(self, name, where)
        if self.merged:
            raise ConfigError(f"{where}: unmerge before adding adapter {name!r}")
        if cfg.r > min(self.in_features, self.out_features):
            raise ConfigError(
                f"LoRA rank r={cfg.r} is larger than layer {where!r} "
                f"({self.out_features}x{self.in_features})"
            )
        lora = LoRAWeights(self.in_features, self.out_features, cfg.r, cfg.scale, cfg.dropout)
        self.adapters[name] = lora.to(device=self.base.weight.device, dtype=self.base.weight.dtype)
        self.active = name

    def merge(self) -> None:
        """W += (α/r)·B·A for the active adapter; forward then costs only the base matmul."""
        if self.merged or self.active is None:
            return
        with torch.no_grad():
            self.base.weight += self.adapters[self.active].delta_weight().to(self.base.weight.dtype)
        self.merged = True

    def unmerge(self) -> None:
        if not self.merged:
            return
        with torch.no_grad():
            self.base.weight -= self.adapters[self.active].delta_weight().to(self.base.weight.dtype)
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.disabled or self.merged or self.active is None:
            return y
        return y + self.adapters[self.active](x)


def apply_lora(model: nn.Module, cfg: LoRAConfig | None = None, name: str = "default") -> nn.Module:
    """Attach LoRA adapter `name` to the modules `cfg.targets` selects; only its parameters train."""
    cfg = cfg or LoRAConfig()
    for where in core.find_targets(model, cfg.targets, "lora"):
        module = model.get_submodule(where)
        if not isinstance(module, LoRALinear):
            if core.is_host(module):
                raise ConfigError(f"lora: {where!r} already holds a different kind of adapter")
            module = LoRALinear(module)
            core.replace_module(model, where, module)
        module.add(name, cfg, where)
    core.set_active_adapter(model, name)
    return model


def merge_lora(model: nn.Module) -> None:
    for _, host in core.hosts(model):
        if isinstance(host, LoRALinear):
            host.merge()


def unmerge_lora(model: nn.Module) -> None:
    for _, host in core.hosts(model):
        if isinstance(host, LoRALinear):
            host.unmerge()


def config_dict(cfg: LoRAConfig) -> dict:
    return asdict(cfg)
