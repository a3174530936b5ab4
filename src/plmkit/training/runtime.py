"""Where a recipe runs: the one place a `--device` string becomes a `torch.device`, and what it supports.

    auto      CUDA if a GPU is visible, then Apple's MPS, then the CPU
    cpu       the CPU
    cuda      a GPU: under torchrun each rank takes `cuda:LOCAL_RANK`, alone it takes the current GPU
    cuda:N    GPU N (one process only: under torchrun every rank would land on the same card)
    mps       Apple silicon

Every recipe has `--device` (default auto) and hands it to `distributed.init_distributed`, which calls
`resolve_device` and joins the process group with the matching backend (nccl for CUDA, gloo otherwise).
"""

from __future__ import annotations

import re

import torch

from plmkit.errors import ConfigError

DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"
_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto", local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device `name` means for this process (`local_rank` of `world_size` on its node).

    Raises ConfigError for an unknown name or a device this machine does not have.
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif _mps_available() and world_size == 1:
            name = "mps"
        else:
            name = "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise ConfigError("--device=mps: this machine has no Apple MPS device; use cpu or auto")
        if world_size > 1:
            raise ConfigError("--device=mps: torchrun with several processes needs cuda or cpu")
        return torch.device("mps")
    match = _CUDA.match(name)
    if match is None:
        raise ConfigError(f"--device={name!r}: expected {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device={name}: no CUDA GPU is visible (torch.cuda.is_available() is False)")
    count = torch.cuda.device_count()
    if match.group(1) is None:
        index = local_rank if world_size > 1 else torch.cuda.current_device()
    else:
        if world_size > 1:
            raise ConfigError(
                f"--device={name}: under torchrun use --device=cuda; each rank takes cuda:LOCAL_RANK"
            )
        index = int(match.group(1))
    if index >= count:
        last = f"cuda:{count - 1}"
        raise ConfigError(f"--device={name}: this machine has {count} CUDA device(s), cuda:0 to {last}")
    return torch.device("cuda", index)


def supports_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast runs on `device` (Ampere or newer GPUs, any CPU, MPS on recent macOS)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "mps":
        try:
            torch.zeros(1, dtype=torch.bfloat16, device=device)
        except (RuntimeError, TypeError):
            return False
        return True
    return device.type == "cpu"


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a mixed precision the device cannot run, naming the device, instead of failing mid-step."""
    if precision == "bf16" and not supports_bf16(device):
        raise ConfigError(
            f"--train.precision=bf16: {device} does not support bfloat16; use fp16 (CUDA) or fp32"
        )
    if precision == "fp16" and device.type not in ("cuda", "cpu", "mps"):
        raise ConfigError(f"--train.precision=fp16: not supported on {device}")
