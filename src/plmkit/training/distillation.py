"""Knowledge distillation's building blocks (Hinton et al. 2015; DistilBERT, Sanh et al. 2019): a student
made from every other layer of its teacher, the module that runs both on one batch, and the step function
the training loop runs. `plmkit distill` and the tour's compression experiment both train with these."""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.errors import ConfigError
from plmkit.evaluation.heldout import _accepts_token_types
from plmkit.models.heads import TaskModel
from plmkit.objectives.distillation import (
    DistillationWeights,
    combine_distillation,
    hidden_cosine_loss,
    soft_target_loss,
)
from plmkit.objectives.mlm import IGNORE
from plmkit.training.loop import StepOutput

__all__ = ["UNLABELLED", "Distiller", "count_parameters", "every_other_layer", "make_step",
           "student_from_teacher"]


def every_other_layer(num_layers: int) -> list[int]:
    """DistilBERT's choice: keep layers 0, 2, 4, ... of the teacher."""
    return list(range(0, num_layers, 2))


def student_from_teacher(teacher: TaskModel, layers: list[int] | None = None) -> TaskModel:
    """A copy of `teacher` that keeps only the given encoder layers (default: every other one)."""
    backbone = teacher.backbone
    if not hasattr(backbone, "layers") or not hasattr(backbone.config, "num_layers"):
        raise ConfigError(f"cannot take layers from a {type(backbone).__name__}: it has no `layers` list")
    n = len(backbone.layers)
    layers = list(layers) if layers else every_other_layer(n)
    bad = [i for i in layers if not 0 <= i < n]
    if bad or not layers:
        raise ConfigError(f"student_layers {layers} must be indices of the teacher's {n} layers")
    student = copy.deepcopy(teacher)
    student.backbone.layers = nn.ModuleList(copy.deepcopy(backbone.layers[i]) for i in layers)
    student.backbone.config = replace(backbone.config, num_layers=len(layers))
    return student


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Distiller(nn.Module):
    """Student and frozen teacher run on the same batch: both last hidden states and both logits."""

    def __init__(self, student: TaskModel, teacher: TaskModel):
        super().__init__()
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()  # the teacher's soft targets never see dropout
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        extra = {}
        if "token_type_ids" in batch and _accepts_token_types(self.student):
            extra["token_type_ids"] = batch["token_type_ids"]
        mask = batch["attention_mask"]
        s_hidden = self.student.backbone(input_ids=batch["input_ids"], attention_mask=mask, **extra)
        with torch.no_grad():
            t_hidden = self.teacher.backbone(input_ids=batch["input_ids"], attention_mask=mask, **extra)
            t_logits = self.teacher.head(t_hidden, mask)
        return {
            "student_hidden": s_hidden,  # (B, T, D)
            "student_logits": self.student.head(s_hidden, mask),  # (B, C)
            "teacher_hidden": t_hidden,
            "teacher_logits": t_logits,
        }


UNLABELLED = IGNORE  # -100, the label of a transfer-set row: soft targets only


def make_step(weights: DistillationWeights):  # noqa: ANN201 - a StepFn
    """The distillation loss on a Distiller batch. Rows labelled -100 have no gold label: they add the
    soft-target and hidden-state terms only, so a transfer set of unlabelled text the teacher labels can be
    mixed in (Hinton et al. 2015, section 2; TinyBERT's augmented task distillation)."""

    def step(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
        out = model(batch)
        kl_sum, n = soft_target_loss(out["student_logits"], out["teacher_logits"], weights.temperature)
        labels = batch["labels"]
        gold = (labels != UNLABELLED).sum().clamp(min=1)
        task_sum = F.cross_entropy(
            out["student_logits"].float(), labels, ignore_index=UNLABELLED, reduction="sum"
        )
        task_mean = task_sum / gold
        cos_sum, n_tokens = hidden_cosine_loss(
            out["student_hidden"], out["teacher_hidden"], batch["attention_mask"]
        )
        loss = combine_distillation(kl_sum / n, task_mean, cos_sum / n_tokens, weights)
        batch_size = batch["labels"].numel()
        metrics = {
            "kl": float(kl_sum.detach() / n),
            "task": float(task_mean.detach()),
            "cos": float(cos_sum.detach() / n_tokens),
        }
        # A sequence-level loss: the window average is over examples.
        return StepOutput(loss_sum=loss * batch_size, num_targets=batch_size, metrics=metrics)

    return step
