"""The step functions (`step_fn(model, batch) -> StepOutput`) the training loop runs for each task.

Written once and imported by the recipes (`plmkit pretrain`, `plmkit finetune`), the tour and the
benchmarks, so what the tour measures is what the commands train. Each returns the loss summed over the
micro-batch and the number of targets it was summed over; the loop divides by the window's total.

Batches are the collated dicts of `plmkit.data`: `input_ids` (B, T), `attention_mask` (B, T) (optional for
causal LM), and `labels` (B, T) next tokens, (B,) classes or (B, T) tags with -100 on the positions that
score nothing; QA batches carry `start_positions` and `end_positions` (B,) instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.data.tasks import IGNORE_INDEX
from plmkit.evaluation.heldout import forward
from plmkit.objectives.fused_ce import model_lm_loss
from plmkit.training.loop import StepOutput

__all__ = ["classification_step", "clm_step", "span_step", "tagging_step"]


def clm_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
    """Causal LM: `labels` are the next tokens of `input_ids` (already shifted), -100 where none."""
    # The head's projection and the loss fused, a chunk of tokens at a time: no (B, T, V) logits.
    loss_sum, n = model_lm_loss(model, batch["labels"], batch["input_ids"], batch.get("attention_mask"))
    return StepOutput(loss_sum=loss_sum, num_targets=n)


def classification_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
    """Sequence classification: cross-entropy of the (B, C) logits; each example is one target."""
    logits = forward(model, batch)  # (B, C)
    loss_sum = F.cross_entropy(logits.float(), batch["labels"], reduction="sum")
    return StepOutput(loss_sum=loss_sum, num_targets=batch["labels"].numel())


def tagging_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
    """Token tagging: cross-entropy of each labelled token (-100: padding, specials, later word pieces)."""
    logits = forward(model, batch)  # (B, T, C)
    labels = batch["labels"]
    loss_sum = F.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return StepOutput(loss_sum=loss_sum, num_targets=int((labels != IGNORE_INDEX).sum()))


def span_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
    """Extractive QA: the start and end cross-entropies of each window."""
    out = forward(model, batch)
    # (start CE + end CE) / 2 per window, as BERT's SQuAD fine-tuning; windows are the targets.
    start = F.cross_entropy(out.start_logits.float(), batch["start_positions"], reduction="sum")
    end = F.cross_entropy(out.end_logits.float(), batch["end_positions"], reduction="sum")
    return StepOutput(loss_sum=(start + end) / 2, num_targets=batch["start_positions"].numel())
