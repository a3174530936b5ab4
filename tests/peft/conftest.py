"""Fixtures of the PEFT tests: the model families, one thread for tiny models."""

from __future__ import annotations

import pytest
import torch
from peft_families import FACTORIES


@pytest.fixture(params=sorted(FACTORIES))
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Tiny matmuls run faster on one thread than contending for the shared cores.
    torch.set_num_threads(1)
