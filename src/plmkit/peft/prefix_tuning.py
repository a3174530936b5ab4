"""Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation").

Every attention layer gets P learned key/value vectors in front of its own keys and values, through
the attention module's explicit `prefix` slot (`models.layers.prepend_prefix`), never through a cache
format. Training the prefixes directly is unstable, so the paper (sec. 4.3) produces them from a
smaller embedding through an MLP during training and keeps only the MLP's output afterwards:
`fold_prefix` turns the reparameterized prefixes into plain `Prefix` parameters. Self-attention and
cross-attention of encoders, decoders and encoder-decoders all have the slot, so one walk covers them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.models.layers import Prefix
from plmkit.peft import core

ENCODER_ATTR = "prefix_encoder"


@dataclass
class PrefixTuningConfig:
    length: int = field(default=10, metadata={"help": "prefix vectors P per attention layer"})
    reparameterize: bool = field(default=True, metadata={"help": "train through an MLP, fold it afterwards"})
    hidden: int = field(default=512, metadata={"help": "width of the reparameterization MLP"})
    init_std: float = field(default=0.02, metadata={"help": "std of directly trained prefixes"})

    def __post_init__(self) -> None:
        if self.length <= 0:
            raise ConfigError(f"PrefixTuningConfig.length must be positive, got {self.length}")
        if self.hidden <= 0:
            raise ConfigError(f"PrefixTuningConfig.hidden must be positive, got {self.hidden}")


class PrefixMLP(nn.Module):
    """Li & Liang's reparameterization: an embedding (P, hidden) -> tanh MLP -> every layer's keys/values."""

    def __init__(self, length: int, hidden: int, shapes: list[tuple[int, int]]):
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(length, hidden))
        self.mlp_in = nn.Linear(hidden, hidden)
        self.shapes = shapes  # (Hkv, Dh) per slot
        self.offsets = [0]
        for hkv, dh in shapes:
            self.offsets.append(self.offsets[-1] + 2 * hkv * dh)
        self.mlp_out = nn.Linear(hidden, self.offsets[-1])

    def slot(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (Hkv, P, Dh) of slot i: only that slot's rows of the output layer are computed."""
        h = torch.tanh(self.mlp_in(self.embedding))  # (P, hidden)
        lo, hi = self.offsets[i], self.offsets[i + 1]
        out = h @ self.mlp_out.weight[lo:hi].t() + self.mlp_out.bias[lo:hi]  # (P, 2·Hkv·Dh)
        hkv, dh = self.shapes[i]
        kv = out.view(-1, 2, hkv, dh).permute(1, 2, 0, 3)  # (2, Hkv, P, Dh)
        return kv[0], kv[1]


class PrefixEncoders(nn.Module):
    """Model-level host of the reparameterization MLPs, one per named adapter."""

    is_adapter_host = True

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.active: str | None = None
        self.disabled = False


class ReparamPrefix(nn.Module):
    """A slot entry whose keys/values come from the shared MLP (held by the model, not by this module)."""

    def __init__(self, encoders: PrefixEncoders, name: str, index: int, length: int):
        super().__init__()
        object.__setattr__(self, "encoders", encoders)  # a reference, not a submodule: saved once
        self.adapter_name = name
        self.index = index
        self._length = length

    @property
    def length(self) -> int:
        return self._length

    def kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoders.adapters[self.adapter_name].slot(self.index)


class PrefixSlot(nn.Module):
    """What sits in an attention module's `prefix` slot: named prefixes, one active.

    With no active prefix (or inside `disable_adapters`) it yields zero-length keys/values, which
    leaves attention exactly as without a prefix.
    """

    is_adapter_host = True

    def __init__(self, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.adapters = nn.ModuleDict()
        self.active: str | None = None
        self.disabled = False
        # Gives the empty prefix the model's device and dtype; not saved.
        self.register_buffer("anchor", torch.zeros(0), persistent=False)

    def _current(self) -> nn.Module | None:
        if self.disabled or self.active is None:
            return None
        return self.adapters[self.active]

    @property
    def length(self) -> int:
        current = self._current()
        return 0 if current is None else current.length

    def forward(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        current = self._current()
        if current is None:
            k = self.anchor.new_zeros(batch_size, self.num_kv_heads, 0, self.head_dim)
            return k, k
        if isinstance(current, Prefix):
            return current(batch_size)
        k, v = current.kv()
        return k.unsqueeze(0).expand(batch_size, -1, -1, -1), v.unsqueeze(0).expand(batch_size, -1, -1, -1)


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every attention module with a prefix slot (self- and cross-attention alike)."""
    found = [(n, m) for n, m in model.named_modules()
             if hasattr(m, "prefix") and isinstance(getattr(m, "k_proj", None), nn.Module)]
    if not found:
        raise ConfigError("prefix tuning: the model has no attention module with a `prefix` slot")
    return found


def _kv_shape(where: str, attn: nn.Module) -> tuple[int, int]:
    hkv = getattr(attn, "num_kv_heads", None) or getattr(attn, "num_heads", None)
    if hkv is None:
        raise ConfigError(f"prefix tuning: {where!r} has no num_heads attribute")
    return hkv, attn.k_proj.out_features // hkv


def apply_prefix_tuning(model: nn.Module, cfg: PrefixTuningConfig | None = None,
                        name: str = "default") -> nn.Module:
    """Fill every attention's prefix slot with learned prefix `name`; only the prefixes (or MLP) train."""
    cfg = cfg or PrefixTuningConfig()
    attns = attention_modules(model)
    shapes = [_kv_shape(where, attn) for where, attn in attns]
    ref = next(model.parameters())
    encoders: PrefixEncoders | None = None
    if cfg.reparameterize:
        encoders = getattr(model, ENCODER_ATTR, None)
        if encoders is None:
            encoders = PrefixEncoders()
            setattr(model, ENCODER_ATTR, encoders)
        core.check_new_name(encoders, name, ENCODER_ATTR)
        encoders.adapters[name] = PrefixMLP(cfg.length, cfg.hidden, shapes).to(ref.device, ref.dtype)
    for i, ((where, attn), (hkv, dh)) in enumerate(zip(attns, shapes)):
        slot = attn.prefix
        if slot is None:
            slot = PrefixSlot(hkv, dh).to(ref.device, ref.dtype)
            attn.prefix = slot
        elif not isinstance(slot, PrefixSlot):
            raise ConfigError(f"prefix tuning: {where}.prefix is already filled by something else")
        core.check_new_name(slot, name, where)
        if encoders is not None:
            slot.adapters[name] = ReparamPrefix(encoders, name, i, cfg.length)
        else:
            prefix = Prefix(hkv, cfg.length, dh).to(ref.device, ref.dtype)
            nn.init.normal_(prefix.key, std=cfg.init_std)
            nn.init.normal_(prefix.value, std=cfg.init_std)
            slot.adapters[name] = prefix
    core.set_active_adapter(model, name)
    return model


def fold_prefix(model: nn.Module, name: str = "default") -> None:
    """Replace the reparameterization MLP of adapter `name` by the plain prefixes it produces."""
    encoders = getattr(model, ENCODER_ATTR, None)
    if encoders is None or name not in encoders.adapters:
        raise ConfigError(f"fold_prefix: adapter {name!r} has no reparameterization MLP to fold")
    for _, attn in attention_modules(model):
        slot = attn.prefix
        entry = slot.adapters[name] if isinstance(slot, PrefixSlot) and name in slot.adapters else None
        if not isinstance(entry, ReparamPrefix):
            continue
        with torch.no_grad():
            k, v = entry.kv()
        prefix = Prefix(slot.num_kv_heads, entry.length, slot.head_dim).to(k.device, k.dtype)
        with torch.no_grad():
            prefix.key.copy_(k)
            prefix.value.copy_(v)
        prefix.requires_grad_(any(p.requires_grad for p in encoders.adapters[name].parameters()))
        slot.adapters[name] = prefix
    del encoders.adapters[name]
    if not len(encoders.adapters):
        delattr(model, ENCODER_ATTR)


def config_dict(cfg: PrefixTuningConfig) -> dict:
    return asdict(cfg)
