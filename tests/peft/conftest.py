"""Tiny models of every family that exists, for the PEFT invariant tests."""

from __future__ import annotations

import pytest
import torch

from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.models.llama import LlamaConfig, llama_lm


def tiny_gpt2() -> torch.nn.Module:
    return gpt2_lm(GPT2Config(vocab_size=97, max_positions=64, d_model=32, num_layers=2, num_heads=4))


def tiny_llama() -> torch.nn.Module:
    return llama_lm(LlamaConfig(vocab_size=97, max_positions=64, d_model=32, num_layers=2, num_heads=4,
                                num_kv_heads=2, d_ff=48))


FACTORIES = {"gpt2": tiny_gpt2, "llama": tiny_llama}


def make(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return FACTORIES[family]().eval()


def inputs(seed: int = 1, batch: int = 2, length: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 97, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, :2] = 0  # a left-padded row
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(params=sorted(FACTORIES))
def family(request: pytest.FixtureRequest) -> str:
    return request.param
