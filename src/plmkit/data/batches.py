"""The `Batches` protocol the training loop reads from, `ShuffledBatches` for in-memory examples and
`RandomWindows` for causal-LM windows at random offsets of a token stream.

A batch source is an endless stream: `next_batch()` never raises StopIteration, it moves on to the next
epoch. Its position is a small dict (`state_dict`) saved in every checkpoint, so a resumed run sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from plmkit.errors import DataError


@runtime_checkable
class Batches(Protocol):
    """An endless, resumable stream of collated micro-batches."""

    def next_batch(self) -> dict[str, Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ShuffledBatches:
    """Epoch-wise shuffled batches of in-memory examples, split across data-parallel ranks.

    Epoch `e` visits the examples in `torch.randperm(n)` drawn from a generator seeded with `seed + e`.
    Batch `i` of an epoch is the global slice `[i * G, (i + 1) * G)` of that order, where
    `G = batch_size * world_size`; rank `r` takes the contiguous part
    `[r * batch_size, (r + 1) * batch_size)`,
    so the union over ranks is exactly the single-process batch of size `G`. The position
    `(epoch, index)` is the whole state.
    """

    def __init__(
        self,
        examples: Sequence[Any],
        collate_fn: Callable[[list[Any]], dict[str, Tensor]],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        n = len(examples)
        global_size = batch_size * world_size
        if n == 0:
            raise DataError("ShuffledBatches got no examples")
        if drop_last and n < global_size:
            raise DataError(
                f"{n} examples cannot fill one global batch of {global_size} "
                f"(batch_size {batch_size} x world_size {world_size}); "
                "lower batch_size or set drop_last=False"
            )
        remainder = n % global_size
        if not drop_last and world_size > 1 and 0 < remainder < world_size:
            raise DataError(
                f"the last batch of {remainder} examples cannot be split over {world_size} ranks; "
                "set drop_last=True"
            )
        self.examples = examples
        self.collate_fn = collate_fn
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.batches_per_epoch = n // global_size if drop_last else -(-n // global_size)
        self.epoch = 0
        self.index = 0
        self._order: Tensor | None = None
        self._order_epoch = -1

    def _epoch_order(self) -> Tensor:
        if self._order_epoch != self.epoch:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            self._order = torch.randperm(len(self.examples), generator=generator)
            self._order_epoch = self.epoch
        assert self._order is not None
        return self._order

    def next_batch(self) -> dict[str, Tensor]:
        if self.index >= self.batches_per_epoch:
            self.epoch += 1
            self.index = 0
        global_size = self.batch_size * self.world_size
        chunk = self._epoch_order()[self.index * global_size : (self.index + 1) * global_size]
        if len(chunk) == global_size:
            local = chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        else:  # the short last batch (drop_last=False): split as evenly as possible
            local = torch.tensor_split(chunk, self.world_size)[self.rank]
        self.index += 1
        return self.collate_fn([self.examples[i] for i in local.tolist()])

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "index": self.index,
            "seed": self.seed,
            "num_examples": len(self.examples),
            "global_batch_size": self.batch_size * self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {
            "seed": self.seed,
            "num_examples": len(self.examples),
            "global_batch_size": self.batch_size * self.world_size,
        }
        for key, value in expected.items():
            if state.get(key) != value:
                raise DataError(
                    f"sampler state key {key!r} is {state.get(key)!r} but this run has {value!r}; "
                    "resume with the same data, seed and global batch size"
                )
        self.epoch = int(state["epoch"])
        self.index = int(state["index"])


@runtime_checkable
class TokenStream(Protocol):
    """One flat array of token ids (a `TokenStore`): its length and contiguous reads."""

    num_tokens: int

    def read(self, start: int, length: int) -> Any: ...


class RandomWindows:
    """Causal-LM windows of `seq_len + 1` consecutive ids at uniformly random offsets of a token stream.

    This is nanoGPT's `get_batch`: every step draws fresh start positions in `[0, num_tokens - T - 1]`
    (T = seq_len), so a token is seen at every position of the window over the run, not at one fixed
    phase as with packed windows. There are no epochs. Global batch `i` (G = batch_size * world_size
    starts) is row `i % BLOCK` of a `(BLOCK, G)` draw from a generator seeded with `seed + i // BLOCK`,
    and rank `r` takes starts `[r * batch_size, (r + 1) * batch_size)` of it; `index` is the whole
    state, so a resumed run redraws exactly the same windows.
    """

    BLOCK = 1024  # batches per generator draw: one seeding per block keeps resume O(1)

    def __init__(self, stream: TokenStream, seq_len: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        if seq_len < 1 or batch_size < 1:
            raise DataError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        if stream.num_tokens < seq_len + 1:
            raise DataError(
                f"token stream of {stream.num_tokens} tokens is shorter than one window "
                f"of seq_len {seq_len} + 1"
            )
        self.stream = stream
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.index = 0
        self._block: Tensor | None = None
        self._block_id = -1

    def starts(self) -> list[int]:
        """Start offsets of the windows the next `next_batch` returns on this rank (without advancing)."""
        block_id = self.index // self.BLOCK
        if block_id != self._block_id:
            generator = torch.Generator().manual_seed(self.seed + block_id)
            high = self.stream.num_tokens - self.seq_len  # exclusive: the last window ends at num_tokens
            self._block = torch.randint(0, high, (self.BLOCK, self.batch_size * self.world_size),
                                        generator=generator)
            self._block_id = block_id
        assert self._block is not None
        row = self._block[self.index % self.BLOCK]
        return row[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].tolist()

    def next_batch(self) -> dict[str, Tensor]:
        starts = self.starts()
        self.index += 1
        T = self.seq_len
        rows = [torch.as_tensor(self.stream.read(s, T + 1), dtype=torch.long) for s in starts]
        tokens = torch.stack(rows)  # (B, T + 1)
        return {
            "input_ids": tokens[:, :-1].contiguous(),  # (B, T)
            "labels": tokens[:, 1:].contiguous(),  # (B, T)
            "attention_mask": torch.ones(len(starts), T, dtype=torch.long),  # (B, T)
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "seed": self.seed,
            "num_tokens": self.stream.num_tokens,
            "seq_len": self.seq_len,
            "global_batch_size": self.batch_size * self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {
            "seed": self.seed,
            "num_tokens": self.stream.num_tokens,
            "seq_len": self.seq_len,
            "global_batch_size": self.batch_size * self.world_size,
        }
        for key, value in expected.items():
            if state.get(key) != value:
                raise DataError(
                    f"sampler state key {key!r} is {state.get(key)!r} but this run has {value!r}; "
                    "resume with the same token store, seq_len, seed and global batch size"
                )
        self.index = int(state["index"])
