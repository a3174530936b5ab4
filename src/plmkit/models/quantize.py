"""int8 weight-only quantization of a model's linear layers, for decoding.

Decoding one token at batch 1 multiplies a vector by every weight matrix once, so its time is the time to
read the weights: int8 weights are a quarter of the fp32 bytes. Each output channel (row) of a weight
matrix W (O, I) gets its own symmetric scale (per-channel quantization, as LLM.int8()'s vector-wise
weights and torchao's `int8_weight_only`):

    s_o = max_i |W_{o,i}| / 127,   Q_{o,i} = round(W_{o,i} / s_o) ∈ [-127, 127],
    y_o = s_o · Σ_i x_i Q_{o,i} + b_o

Only the weights are quantized; activations stay floating point. On the CPU the product runs in torch's
own weight-only int8 kernel (`aten._weight_int8pack_mm`), which is fast with bf16 activations (on this
machine's AVX-512 its fp32-activation path is ten times slower than fp32 weights): the input is rounded
to bf16 for the product and the result is scaled back in fp32, so the per-channel scale itself is never
rounded to bf16. Elsewhere (a GPU) the weights are dequantized per call, correct but not faster.

`quantize(model, "int8")` swaps every `nn.Linear` (the LM head included; a tied head gets its own int8
copy, the embedding it was tied to stays fp32 for lookups) for an `Int8Linear` in place.
Save and load through `plmkit.interop.quantized` (safetensors with the int8 weights and the scales).

Shape legend: N rows (tokens), I input features, O output features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.errors import ConfigError

METHODS = ("int8",)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8: W (O, I) -> (Q int8 (O, I), scale fp32 (O,)), W ≈ Q · scale[:, None]

    An all-zero row gets scale 1 (and zeros), so nothing divides by zero.
    """
    w = weight.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """y = (x Qᵀ) · scale + b with int8 Q (O, I) and fp32 per-channel scale (O,); x (..., I) -> (..., O)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        # The kernel's own scale argument is bf16; ones there keep the fp32 scale exact (applied after).
        self.register_buffer("_unit_scale", torch.ones(out_features, dtype=torch.bfloat16), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Module) -> Int8Linear:
        weight = linear.weight
        bias = getattr(linear, "bias", None)
        out = cls(weight.shape[1], weight.shape[0], bias=bias is not None)
        q, scale = quantize_weight(weight)
        out.weight_int8.copy_(q)
        out.weight_scale.copy_(scale)
        if bias is not None:
            out.bias.copy_(bias.detach().float())
        return out.to(weight.device)

    def dequantized_weight(self) -> torch.Tensor:
        """Q · scale (O, I) in fp32: what the layer multiplies by."""
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)  # (N, I)
        if x.device.type == "cpu":
            y = torch.ops.aten._weight_int8pack_mm(x2.to(torch.bfloat16), self.weight_int8, self._unit_scale)
        else:
            y = F.linear(x2.float(), self.weight_int8.float())
        # scale (and bias) in one op, which also promotes the bf16 product to fp32: at batch 1 each extra
        # small op costs about as much as a block's int8 product.
        if self.bias is not None:
            y = torch.addcmul(self.bias, y, self.weight_scale)  # (N, O)
        else:
            y = y * self.weight_scale
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}"


def linear_names(model: nn.Module) -> list[str]:
    """Names of the modules `quantize` replaces: every `nn.Linear` (and a tied projection with a weight)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "TiedProjection":
            names.append(name)
    return names


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def quantize(model: nn.Module, method: str = "int8") -> nn.Module:
    """Replace the model's linear layers by weight-only int8 ones, in place; returns the model (in eval mode).
    An already quantized model is returned as it is.

    method: "int8" (per-output-channel symmetric, see the module docstring).
    """
    if method not in METHODS:
        raise ConfigError(f"quantization method {method!r} is not one of {', '.join(METHODS)}")
    names = linear_names(model)
    if not names and not any(isinstance(m, Int8Linear) for m in model.modules()):
        raise ConfigError(f"{type(model).__name__} has no linear layers to quantize")
    for name in names:
        _set_module(model, name, Int8Linear.from_linear(model.get_submodule(name)))
    return model.eval()


def prepare_quantized(model: nn.Module, names: list[str], method: str = "int8") -> nn.Module:
    """Swap the named linear layers for empty `Int8Linear`s, the shapes a saved quantized model has,
    so its state dict (int8 weights and scales) loads strictly."""
    if method not in METHODS:
        raise ConfigError(f"quantization method {method!r} is not one of {', '.join(METHODS)}")
    for name in names:
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"quantized module {name!r} is not in {type(model).__name__}") from None
        out_features, in_features = old.weight.shape
        bias = getattr(old, "bias", None) is not None
        _set_module(model, name, Int8Linear(in_features, out_features, bias))
    return model.eval()
