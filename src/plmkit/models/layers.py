"""Shared transformer math: things with one behaviour and a math name.

Every family file builds its blocks from these functions. A function here never grows a flag that
only one family uses: family quirks (post-LN, T5's relative bias, rotary variants) stay in the family file.

Shape legend: B batch, T query length, S key length, D model width, H heads, Hkv key/value heads,
Dh head width, P prefix length, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens, so a left-padded row gets the positions it would
    have alone: cumsum(mask) - 1, clamped at 0 on the padding."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


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


def rotary_tables(
    positions: torch.Tensor, head_dim: int, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin for rotary position embedding (Su et al. 2021): positions (B, T) -> (B, 1, T, Dh) each."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    angles = positions.float()[..., None] * inv_freq  # (B, T, Dh/2)
    emb = torch.cat([angles, angles], dim=-1)  # (B, T, Dh)
    return emb.cos()[:, None], emb.sin()[:, None]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+Dh/2}) by the position angle: the half-split layout Llama checkpoints use."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos.to(x.dtype)) + (rotated * sin.to(x.dtype))


def causal_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 1/0 mask -> boolean (B, 1, T, T): causal and no padded keys.

    Each query also sees itself, so a padding query never gets an all-masked row (SDPA would return
    NaN there, and the NaN would leak through the values of later layers).
    """
    t = attention_mask.shape[-1]
    causal = causal_mask(t, t, device=attention_mask.device)
    eye = torch.eye(t, dtype=torch.bool, device=attention_mask.device)
    return ((causal[None] & attention_mask.bool()[:, None, :]) | eye[None])[:, None]
