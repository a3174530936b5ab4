"""plmkit: pretrain, fine-tune, adapt, prompt and align language models in readable PyTorch."""

from __future__ import annotations

__version__ = "0.1.0"
