"""A static, preallocated key/value cache for decoders.

Buffers are allocated once at (B, Hkv, S_max, Dh) per layer and written in place, so every decode step
has the same tensor shapes: that is what lets `torch.compile` (and CUDA graphs) capture the step once.
Attention always runs over all S_max slots; unwritten slots and padding are masked out, which gives
exactly the tokens that recomputing the whole prefix gives.

The cache also remembers which slots hold real tokens and how many real tokens each row has seen, so
left-padded rows get the positions they would have alone. It never holds prefix-tuning entries: the
attention prepends its `prefix` after `update`.

Shape legend: B batch, T new tokens, S cache slots (S_max), Hkv key/value heads, Dh head width.
"""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer key/value buffers plus the bookkeeping a decoder forward needs."""

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        head_dim: int,
        max_length: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        shape = (batch_size, num_kv_heads, max_length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.key_mask = torch.zeros(batch_size, max_length, dtype=torch.bool, device=device)  # (B, S)
        self.length = torch.zeros((), dtype=torch.long, device=device)  # slots written so far
        self.seen = torch.zeros(batch_size, dtype=torch.long, device=device)  # real tokens per row
        self.max_length = max_length
        self._slots = torch.arange(max_length, device=device)
        self._step_slots: torch.Tensor | None = None

    @classmethod
    def for_model(
        cls, config: object, batch_size: int, max_length: int, dtype: torch.dtype, device: torch.device
    ) -> KVCache:
        """A cache sized from a decoder config with `num_layers`, `num_kv_heads` and `head_dim`."""
        return cls(
            config.num_layers, batch_size, config.num_kv_heads, config.head_dim, max_length, dtype, device
        )

    def begin(
        self, attention_mask: torch.Tensor | None, t: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Record T new tokens (mask (B, T), 1 = real) and return the attention mask (B, 1, T, S)
        and the position ids (B, T) for them. Call `update` per layer, then `end`."""
        b = self.key_mask.shape[0]
        if attention_mask is None:
            new_mask = torch.ones(b, t, dtype=torch.bool, device=self.key_mask.device)
        else:
            new_mask = attention_mask.bool()
        slots = self.length + torch.arange(t, device=self.key_mask.device)  # (T,)
        self._step_slots = slots
        self.key_mask.index_copy_(1, slots, new_mask)
        positions = self.seen[:, None] + new_mask.long().cumsum(-1) - 1
        positions = positions.clamp(min=0)
        self.seen += new_mask.long().sum(-1)
        causal = self._slots[None, :] <= slots[:, None]  # (T, S)
        # Each query also sees its own slot, so a padding query never has an empty row (NaN).
        own = self._slots[None, :] == slots[:, None]
        mask = (causal[None] & self.key_mask[:, None, :]) | own[None]  # (B, T, S)
        return mask[:, None], positions

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's k, v (B, Hkv, T, Dh) into the layer's buffers; return the full buffers."""
        self.keys[layer].index_copy_(2, self._step_slots, k.to(self.keys[layer].dtype))
        self.values[layer].index_copy_(2, self._step_slots, v.to(self.values[layer].dtype))
        return self.keys[layer], self.values[layer]

    def end(self, t: int) -> None:
        self.length += t

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows `rows` (beam search: each beam continues from the beam it was chosen from)."""
        for buf in (self.keys, self.values):
            for i, x in enumerate(buf):
                buf[i] = x.index_select(0, rows)
        self.key_mask = self.key_mask.index_select(0, rows)
        self.seen = self.seen.index_select(0, rows)
