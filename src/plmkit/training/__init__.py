"""The one training loop, its optimizer and schedules, checkpoints and distributed set-up."""

from __future__ import annotations

from plmkit.training.checkpoint import find_latest, load_checkpoint, save_checkpoint, verify_checkpoint
from plmkit.training.distributed import DistInfo, init_distributed
from plmkit.training.loop import (
    StepOutput,
    TrainConfig,
    TrainResult,
    accumulate_gradients,
    step_generator,
    train,
)
from plmkit.training.optim import lr_factor, no_decay_names

__all__ = [
    "DistInfo",
    "StepOutput",
    "TrainConfig",
    "TrainResult",
    "accumulate_gradients",
    "find_latest",
    "init_distributed",
    "load_checkpoint",
    "lr_factor",
    "no_decay_names",
    "save_checkpoint",
    "step_generator",
    "train",
    "verify_checkpoint",
]
