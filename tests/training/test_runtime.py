"""Device resolution (`--device`) and the precision check: one place, clear errors."""

from __future__ import annotations

import pytest
import torch

from plmkit.errors import ConfigError
from plmkit.training.runtime import check_precision, resolve_device, supports_bf16


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("plmkit.training.runtime._mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr("plmkit.training.runtime._mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    assert resolve_device("auto", world_size=2) == torch.device("cpu")  # MPS has no process group backend
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda", local_rank=3, world_size=4) == torch.device("cuda", 3)
    assert resolve_device("cuda:2") == torch.device("cuda", 2)
    with pytest.raises(ConfigError, match="under torchrun use --device=cuda"):
        resolve_device("cuda:1", local_rank=0, world_size=2)
    with pytest.raises(ConfigError, match="has 4 CUDA device"):
        resolve_device("cuda:7")


def test_cpu_and_bad_names() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device='gpu0': expected auto"):
        resolve_device("gpu0")


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--device=cuda: no CUDA GPU is visible"):
        resolve_device("cuda")


def test_precision_check(monkeypatch) -> None:
    assert supports_bf16(torch.device("cpu"))
    check_precision("bf16", torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    with pytest.raises(ConfigError, match="does not support bfloat16"):
        check_precision("bf16", torch.device("cuda", 0))


def test_fsdp_without_a_process_group_is_a_clear_error() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    import tiny_run

    with pytest.raises(ConfigError, match="train.fsdp shards over a process group: run under torchrun"):
        tiny_run.run("", steps=1, fsdp=True)
