"""plmkit: pretrain, fine-tune, adapt, prompt and align language models in readable PyTorch."""

from __future__ import annotations

__version__ = "0.1.0"

from plmkit.interop.hf import Pretrained, load, save_hf  # noqa: E402, F401 - public API
from plmkit.models.generation import generate  # noqa: E402, F401 - public API
