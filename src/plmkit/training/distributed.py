"""Data-parallel set-up: process groups from torchrun's environment, DDP or FSDP2 wrapping, small collectives.

Run a script under `torchrun --nproc_per_node=N script.py`; the script calls `init_distributed(device)`
once before building its data (it reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK, so recipes call it, not
library code), moves the model to `info.device`, and `train()` wraps the model itself.

A failure on one rank must not leave the others waiting at a collective: the failing process exits
(torchrun then stops the rest of the group at once), and `main_first` / `on_main` make every rank leave
together with the first rank's error when the work only rank 0 does fails.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from plmkit.errors import ConfigError, TrainingError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes and resolve `device` (see `runtime.resolve_device`)
    for this rank: nccl for CUDA, gloo otherwise. For one process it only resolves the device."""
    from plmkit.training.runtime import resolve_device

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank, world_size)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    # torchrun sets RANK even for one process: join then too, so --train.fsdp works on a single rank
    if (world_size > 1 or "RANK" in os.environ) and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    info = dist_info()
    return DistInfo(info.rank, info.world_size, local_rank, resolved)


def dist_info() -> DistInfo:
    """Rank, world size and default device of this process, from the initialized process group (if any)."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    elif torch.cuda.is_available() and not (dist.is_available() and dist.is_initialized()):
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
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
        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError(
                "train.fsdp shards over a process group: run under torchrun "
                "(torchrun --nproc_per_node=N -m plmkit ...), or drop --train.fsdp for one process"
            )
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


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank `src`'s `obj` on every rank (`obj` itself for one process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn: Callable[[], T]) -> T | None:
    """Run `fn` on rank 0 only and return its result there (None elsewhere); every rank waits for it.

    If `fn` fails on rank 0 the other ranks raise the same error instead of waiting at a barrier that
    rank 0 never reaches.
    """
    result: T | None = None
    error: str | None = None
    failure: BaseException | None = None
    if dist_info().is_main:
        try:
            result = fn()
        except Exception as exc:  # reported on every rank below, re-raised here unchanged
            failure, error = exc, f"{type(exc).__name__}: {exc}"
    error = broadcast_object(error)  # type: ignore[assignment]
    if failure is not None:
        raise failure
    if error is not None:
        raise TrainingError(f"rank 0 failed: {error}")
    return result


def main_first(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0, then on the other ranks, and return its result on every rank.

    For work every rank needs but only one may create, such as a token store built on first use: rank 0
    builds it, the others then find it and open it. A failure on rank 0 ends every rank with its message.
    """
    if not is_distributed():
        return fn()
    if dist_info().is_main:
        try:
            result = fn()
        except Exception as exc:
            broadcast_object(f"{type(exc).__name__}: {exc}")
            raise
        broadcast_object(None)
        return result
    error = broadcast_object(None)
    if error is not None:
        raise TrainingError(f"rank 0 failed: {error}")
    return fn()


def full_model(model: nn.Module) -> nn.Module | None:
    """The model with ordinary (unsharded) parameters for exporting: every rank calls it.

    Without FSDP this is `model` itself. Under FSDP2 the full weights are gathered onto rank 0's CPU
    (a collective) and rank 0's module is turned back into a plain module holding them; the other ranks
    get None. Training is over after this: the sharded module is taken apart on rank 0.
    """
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.fsdp._fully_shard._fsdp_state import FSDPState

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not dist_info().is_main:
        return None
    replaced: dict[int, nn.Parameter] = {}  # tied weights stay one Parameter
    for name, module in model.named_modules():
        if isinstance(module, FSDPModule):
            module.__class__ = next(c for c in type(module).__mro__[1:] if not issubclass(c, FSDPModule))
            for hooks in (module._forward_pre_hooks, module._forward_hooks):
                owned = [k for k, h in hooks.items() if isinstance(getattr(h, "__self__", None), FSDPState)]
                for key in owned:
                    del hooks[key]
        for pname, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in replaced:
                key = f"{name}.{pname}" if name else pname
                replaced[id(param)] = nn.Parameter(full[key], requires_grad=param.requires_grad)
            module._parameters[pname] = replaced[id(param)]
    return model
