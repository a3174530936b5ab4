"""A static, preallocated key/value cache for decoders.

Buffers are allocated once at (B, Hkv, S_max, Dh) per layer and written in place, so every decode step
has the same tensor shapes: that is what lets `torch.compile` (and CUDA graphs) capture the step once.
Attention always runs over all S_max slots; unwritten slots and padding are masked out, which gives
exactly the tokens that recomputing the whole prefix gives.

The cache also remembers which slots hold real tokens and how many real tokens each row has seen, so
left-padded rows get the positions they would have alone. It never holds prefix-tuning entries: the
attention prepends its `prefix` after `update`.

A sliding-window layer (window W shorter than S_max) keeps only a ring of W slots: slot s lives at
s mod W, and a step attends over the ring plus its own T new keys (W + T: still one static shape per
step), so Mistral-style layers hold W keys however long the generation runs. Windows are counted in
slots, as transformers counts them in cache positions (left padding included).

Shape legend: B batch, T new tokens, S cache slots (S_max), Hkv key/value heads, Dh head width.
"""

from __future__ import annotations

from collections.abc import Sequence

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
        windows: Sequence[int | None] | None = None,
    ):
        windows = [None] * num_layers if windows is None else list(windows)
        # A window as long as the cache never hides a key: such layers keep the plain layout.
        self.windows = [w if w is not None and w < max_length else None for w in windows]
        sizes = [max_length if w is None else w for w in self.windows]
        self.keys = [
            torch.zeros(batch_size, num_kv_heads, n, head_dim, dtype=dtype, device=device) for n in sizes
        ]
        self.values = [torch.zeros_like(k) for k in self.keys]
        # For each ring size W: the slot each ring entry holds (-1: empty), shared by all rows.
        rings = sorted({w for w in self.windows if w is not None})
        self.ring_slots = {w: torch.full((w,), -1, dtype=torch.long, device=device) for w in rings}
        self._window_masks: dict[int, torch.Tensor] = {}
        self._full_mask: torch.Tensor | None = None
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
        """A cache sized from a decoder config with `num_layers`, `num_kv_heads` and `head_dim` (and the
        per-layer attention windows of `layer_windows()`, where the family has them)."""
        windows = config.layer_windows() if hasattr(config, "layer_windows") else None
        return cls(
            config.num_layers, batch_size, config.num_kv_heads, config.head_dim, max_length, dtype, device,
            windows,
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
        self._full_mask = mask[:, None]  # (B, 1, T, S)
        self._window_masks = {w: self._ring_mask(w, slots) for w in self.ring_slots}
        return self._full_mask, positions

    def _ring_mask(self, w: int, slots: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, W + T) mask over a ring of W old keys followed by the T new ones."""
        key_slots = torch.cat([self.ring_slots[w], slots])  # (W + T,)
        held = key_slots >= 0
        real = self.key_mask.index_select(1, key_slots.clamp(min=0)) & held  # (B, W + T)
        distance = slots[:, None] - key_slots[None, :]  # (T, W + T)
        visible = (distance >= 0) & (distance < w)
        t = slots.shape[0]
        own = torch.zeros_like(visible)
        own[:, w:] = torch.eye(t, dtype=torch.bool, device=visible.device)
        return ((visible[None] & real[:, None, :]) | own[None])[:, None]

    def window_mask(self, window: int) -> torch.Tensor:
        """The mask for layers with this window, after `begin` (the full mask if the window never bites)."""
        if window in self._window_masks:
            return self._window_masks[window]
        if window >= self.max_length:
            return self._full_mask
        # A cache built without `windows` keeps every slot: the window is then a mask over all of them.
        near = self._slots[None, :] > self._step_slots[:, None] - window  # (T, S)
        own = self._slots[None, :] == self._step_slots[:, None]
        return self._full_mask & (near | own)[None, None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's k, v (B, Hkv, T, Dh) into the layer's buffers; return the keys and values to
        attend over: the full buffers, or for a ring layer the W held keys followed by the T new ones."""
        keys, values = self.keys[layer], self.values[layer]
        k, v = k.to(keys.dtype), v.to(values.dtype)
        w = self.windows[layer]
        if w is None:
            keys.index_copy_(2, self._step_slots, k)
            values.index_copy_(2, self._step_slots, v)
            return keys, values
        out_k, out_v = torch.cat([keys, k], 2), torch.cat([values, v], 2)  # (B, Hkv, W + T, Dh)
        kept = self._step_slots[-w:]  # only the last W new keys can still be seen later
        keys.index_copy_(2, kept % w, k[:, :, -w:])
        values.index_copy_(2, kept % w, v[:, :, -w:])
        return out_k, out_v

    def end(self, t: int) -> None:
        for w, ring in self.ring_slots.items():
            kept = self._step_slots[-w:]
            ring.index_copy_(0, kept % w, kept)
        self.length += t

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows `rows` (beam search: each beam continues from the beam it was chosen from)."""
        for buf in (self.keys, self.values):
            for i, x in enumerate(buf):
                buf[i] = x.index_select(0, rows)
        self.key_mask = self.key_mask.index_select(0, rows)
        self.seen = self.seen.index_select(0, rows)
