"""Shared transformer math: things with one behaviour and a math name.

Every family file builds its blocks from these functions. A function here never grows a flag that
only one family uses: family quirks (post-LN, T5's relative bias, rotary variants) stay in the family file.

Shape legend: B batch, T query length, S key length, D model width, H heads, Hkv key/value heads,
Dh head width, P prefix length, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.errors import ConfigError


class Prefix(nn.Module):
    """Learned key/value vectors placed in front of an attention layer's keys and values.

    This is the explicit slot prefix tuning fills: every attention module has `self.prefix = None`,
    and when a `Prefix` is put there its keys and values are prepended (Li & Liang 2021, sec. 4).
    """

    def __init__(self, num_kv_heads: int, length: int, head_dim: int):
        super().__init__()
        self.key = nn.Parameter(torch.zeros(num_kv_heads, length, head_dim))
        self.value = nn.Parameter(torch.zeros(num_kv_heads, length, head_dim))

    @property
    def length(self) -> int:
        return self.key.shape[1]

    def forward(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.key.unsqueeze(0).expand(batch_size, -1, -1, -1)  # (B, Hkv, P, Dh)
        v = self.value.unsqueeze(0).expand(batch_size, -1, -1, -1)
        return k, v


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, T, H*Dh) -> (B, H, T, Dh)."""
    b, t, _ = x.shape
    return x.view(b, t, num_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, Dh) -> (B, T, H*Dh)."""
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)


def repeat_kv(x: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Grouped-query attention: each of the Hkv key/value heads serves `num_groups` query heads."""
    if num_groups == 1:
        return x
    b, hkv, s, dh = x.shape
    return x[:, :, None].expand(b, hkv, num_groups, s, dh).reshape(b, hkv * num_groups, s, dh)


def shift_right(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Decoder inputs from labels (B, T): start token, then labels[:-1], with -100 replaced by pad.

    The teacher-forcing input of every encoder-decoder (T5, BART): position t sees the target up to t-1.
    """
    out = labels.new_full(labels.shape, pad_id)
    out[:, 1:] = labels[:, :-1]
    out[:, 0] = start_id
    return out.masked_fill(out == -100, pad_id)


def init_gpt2(model: nn.Module, std: float) -> None:
    """GPT-2's initialization (Radford et al. 2019, sec. 2.3), which Llama-style decoders keep.

    Linear and Embedding weights ~ N(0, std) and Linear biases 0, then the projections that write into
    the residual stream (each block's attn.o_proj and mlp.down_proj) ~ N(0, std / sqrt(2N)) for N blocks
    in `model.layers`, so the residual's variance does not grow with depth.
    """

    def normal(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    model.apply(normal)  # children before parents, the draw order seeded runs have always had
    residual_std = std / math.sqrt(2 * len(model.layers))
    for block in model.layers:
        nn.init.normal_(block.attn.o_proj.weight, std=residual_std)
        nn.init.normal_(block.mlp.down_proj.weight, std=residual_std)


def prepend_prefix(
    prefix: Prefix | None,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Put the prefix keys/values in front of k, v (B, Hkv, S, Dh) and open the mask to them.

    `mask` is an additive or boolean attention mask broadcastable to (B, H, T, S); prefix positions
    are visible to every query, so P "attend" columns are added on the left.
    """
    if prefix is None:
        return k, v, mask
    pk, pv = prefix(k.shape[0])
    pk, pv = pk.to(k.dtype), pv.to(v.dtype)
    k = torch.cat([pk, k], dim=2)
    v = torch.cat([pv, v], dim=2)
    if mask is not None:
        shape = list(mask.shape)
        shape[-1] = prefix.length
        if mask.dtype == torch.bool:
            pad = torch.ones(shape, dtype=torch.bool, device=mask.device)
        else:
            pad = torch.zeros(shape, dtype=mask.dtype, device=mask.device)
        mask = torch.cat([pad, mask], dim=-1)
    return k, v, mask


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q kᵀ · scale + mask) v through PyTorch's fused kernel.

    q (B, H, T, Dh); k, v (B, H, S, Dh); mask: bool (True = attend) or additive float, broadcastable
    to (B, H, T, S). Returns (B, H, T, Dh).
    """
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal and mask is None, scale=scale
    )


def causal_mask(t: int, s: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (T, S) mask where query i (the last T of S positions) sees keys <= its position."""
    q_pos = torch.arange(s - t, s, device=device)[:, None]
    k_pos = torch.arange(s, device=device)[None, :]
    return k_pos <= q_pos


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, S) 1/0 mask of real tokens -> boolean (B, 1, 1, S) key mask."""
    return attention_mask.bool()[:, None, None, :]


def is_packed(attention_mask: torch.Tensor) -> bool:
    """True for a packed mask: several documents in a row, numbered 1, 2, 3, ... (0 is padding)."""
    return bool((attention_mask > 1).any())


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens, so a left-padded row gets the positions it would
    have alone: cumsum(mask) - 1, clamped at 0 on the padding. In a packed mask each document
    restarts at 0, as it would alone."""
    if not is_packed(attention_mask):
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    t = attention_mask.shape[-1]
    index = torch.arange(t, device=attention_mask.device).expand_as(attention_mask)
    starts = F.pad(attention_mask[:, 1:] != attention_mask[:, :-1], (1, 0), value=True)
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(-1).values
    return (index - first).masked_fill(attention_mask == 0, 0)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) · weight: no mean subtraction and no bias (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in fp32: in bf16 the mean of squares loses the small components.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


# RoPE variants that stretch a pretrained context (Hugging Face's `rope_type` names).
ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")


@dataclass
class RopeScaling:
    """How rotary frequencies are rescaled beyond the pretraining context; `rope_type` picks the method.

    linear: positions / factor (Chen et al. 2023, "position interpolation").
    dynamic: NTK-aware base growth once a sequence exceeds the context (emozilla/bloc97, 2023).
    yarn: per-frequency blend of interpolation and extrapolation, cos/sin scaled by `attention_factor`
      (Peng et al. 2023, "YaRN", eq. 17-21).
    llama3: low frequencies / factor, high ones kept, a smooth ramp between (Llama 3.1 report, sec. 3).
    longrope: per-frequency `short_factor` / `long_factor` rescaling picked by sequence length (Phi-3).
    """

    rope_type: str = "default"
    factor: float | None = None  # yarn/longrope derive it from the contexts when None
    original_max_positions: int | None = None  # pretraining context; None: the model's max_positions
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    mscale: float | None = None  # yarn
    mscale_all_dim: float | None = None  # yarn
    truncate: bool = True  # yarn: round the correction range to whole dimensions
    attention_factor: float | None = None  # yarn, longrope; None: the paper's default from `factor`
    short_factor: tuple[float, ...] | None = None  # longrope, one per frequency
    long_factor: tuple[float, ...] | None = None  # longrope

    def __post_init__(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise ConfigError(
                f"RoPE type {self.rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})"
            )
        if self.factor is None and self.rope_type in ("linear", "dynamic", "llama3"):
            raise ConfigError(f"RoPE {self.rope_type} needs a factor")
        if self.factor is not None and self.factor <= 0:
            raise ConfigError(f"RoPE {self.rope_type} factor must be > 0, got {self.factor}")
        if self.rope_type == "longrope":
            if self.short_factor is None or self.long_factor is None:
                raise ConfigError("RoPE longrope needs short_factor and long_factor lists")
            self.short_factor, self.long_factor = tuple(self.short_factor), tuple(self.long_factor)
        if self.rope_type == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ConfigError(
                f"RoPE llama3 needs high_freq_factor > low_freq_factor, got {self.high_freq_factor} "
                f"<= {self.low_freq_factor}"
            )


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_frequencies(
    positions: torch.Tensor,
    head_dim: int,
    base: float,
    scaling: RopeScaling | None = None,
    max_positions: int | None = None,
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (Dh/2,) and the cos/sin multiplier for `scaling`, as transformers computes them.

    `dynamic` and `longrope` depend on the longest sequence in the batch, max(positions) + 1; that is
    computed with tensor ops (no Python branch), so a compiled decode step stays one graph.
    """
    device = positions.device
    exponents = torch.arange(0, head_dim, 2, device=device).float() / head_dim  # (Dh/2,)
    inv_freq = 1.0 / (base**exponents)
    kind = "default" if scaling is None else scaling.rope_type
    if kind == "default":
        return inv_freq, 1.0
    factor = scaling.factor
    original = scaling.original_max_positions or max_positions
    if kind == "linear":
        return inv_freq / factor, 1.0
    if kind == "dynamic":
        # base' = base · (factor·L/L0 − (factor − 1))^(Dh/(Dh−2)) once L exceeds the context L0
        seq_len = (positions.max() + 1).clamp(min=max_positions).float()
        grown = base * ((factor * seq_len / max_positions) - (factor - 1)) ** (head_dim / (head_dim - 2))
        return 1.0 / (grown**exponents), 1.0
    if kind == "llama3":
        low_wavelen = original / scaling.low_freq_factor
        high_wavelen = original / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor
        )
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled), 1.0
    if kind == "yarn":
        if factor is None:
            factor = max_positions / original
        attention_factor = scaling.attention_factor
        if attention_factor is None:
            if scaling.mscale and scaling.mscale_all_dim:
                attention_factor = _yarn_mscale(factor, scaling.mscale) / _yarn_mscale(
                    factor, scaling.mscale_all_dim
                )
            else:
                attention_factor = _yarn_mscale(factor)

        def correction_dim(rotations: float) -> float:
            return (head_dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

        low, high = correction_dim(scaling.beta_fast), correction_dim(scaling.beta_slow)
        if scaling.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, head_dim - 1)
        if low == high:
            high += 0.001  # the ramp would divide by zero
        ramp = ((torch.arange(head_dim // 2, device=device).float() - low) / (high - low)).clamp(0, 1)
        extrapolate = 1 - ramp  # 1 on high frequencies: kept as pretrained
        return inv_freq / factor * (1 - extrapolate) + inv_freq * extrapolate, float(attention_factor)
    # longrope: the long factors once the batch's longest sequence passes the pretraining context
    if factor is None:
        factor = max_positions / original
    attention_factor = scaling.attention_factor
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    short = torch.tensor(scaling.short_factor, dtype=torch.float32, device=device)
    long = torch.tensor(scaling.long_factor, dtype=torch.float32, device=device)
    ext = torch.where(positions.max() + 1 > original, long, short)
    return inv_freq / ext, float(attention_factor)


def rotary_tables(
    positions: torch.Tensor,
    head_dim: int,
    base: float = 10000.0,
    scaling: RopeScaling | None = None,
    max_positions: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin for rotary position embedding (Su et al. 2021): positions (B, T) -> (B, 1, T, Dh) each."""
    inv_freq, attention_factor = rope_frequencies(positions, head_dim, base, scaling, max_positions)
    angles = positions.float()[..., None] * inv_freq  # (B, T, Dh/2)
    emb = torch.cat([angles, angles], dim=-1)  # (B, T, Dh)
    cos, sin = emb.cos(), emb.sin()
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    return cos[:, None], sin[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+Dh/2}) by the position angle: the half-split layout Llama checkpoints use."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos.to(x.dtype)) + (rotated * sin.to(x.dtype))


def sliding_window_mask(t: int, s: int, window: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (T, S) mask: query i (the last T of S positions) sees the `window` keys ending at itself.

    A window of W covers the query and the W - 1 keys before it (Beltagy et al. 2020; Mistral 7B, sec. 2):
    key j is visible when 0 <= i - j < W, the convention of transformers' sliding-window masks.
    """
    q_pos = torch.arange(s - t, s, device=device)[:, None]
    k_pos = torch.arange(s, device=device)[None, :]
    return (k_pos <= q_pos) & (q_pos - k_pos < window)


def causal_padding_mask(attention_mask: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """(B, T) 1/0 mask -> boolean (B, 1, T, T): causal (within `window` keys if given), no padded keys.

    Each query also sees itself, so a padding query never gets an all-masked row (SDPA would return
    NaN there, and the NaN would leak through the values of later layers). A packed mask (documents
    numbered 1, 2, ...) is block-diagonal: a query sees only earlier keys of its own document, so packed
    examples train as if each were alone in its row.
    """
    t = attention_mask.shape[-1]
    if window is None:
        causal = causal_mask(t, t, device=attention_mask.device)
    else:
        causal = sliding_window_mask(t, t, window, device=attention_mask.device)
    eye = torch.eye(t, dtype=torch.bool, device=attention_mask.device)
    keys = attention_mask.bool()[:, None, :]  # (B, 1, T)
    if is_packed(attention_mask):
        keys = keys & (attention_mask[:, :, None] == attention_mask[:, None, :])  # (B, T, T)
    return ((causal[None] & keys) | eye[None])[:, None]
