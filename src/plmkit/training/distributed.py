"""Data-parallel set-up: process groups from torchrun's environment, DDP or FSDP2 wrapping, small collectives.

Run a script under `torchrun --nproc_per_node=N script.py`; the script calls `init_distributed()` once
before building its data (it reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK, so recipes call it, not
library code), moves the model to `info.device`, and `train()` wraps the model itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); a no-op for one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist_info()


def dist_info() -> DistInfo:
    """Rank, world size and device of this process, from the initialized process group (if any)."""
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo(0, 1, 0, device)
    local_rank = device.index if device.type == "cuda" else dist.get_rank()
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks in place (identity for one process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def layer_lists(model: nn.Module) -> list[nn.ModuleList]:
    """Every `layers` ModuleList in the model (encoder-decoders have two): the units to shard or recompute."""
    return [
        module
        for name, module in model.named_modules()
        if name.split(".")[-1] == "layers" and isinstance(module, nn.ModuleList)
    ]


def wrap_model(model: nn.Module, fsdp: bool) -> nn.Module:
    """Wrap for data parallelism: DDP across ranks, or FSDP2 `fully_shard` on each layer and then the root.

    FSDP2 shards in place (parameters become DTensors) and returns the same module, so build the optimizer
    after this call. Returns the model unchanged for one process without FSDP.
    """
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for layers in layer_lists(model):
            for layer in layers:
                fully_shard(layer)
        fully_shard(model)
        return model
    if not is_distributed():
        return model
    device = next(model.parameters()).device
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def all_gather_object(obj: object) -> list[object]:
    """Every rank's `obj`, in rank order (a one-element list for one process)."""
    if not is_distributed():
        return [obj]
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
