"""The step functions (`step_fn(model, batch) -> StepOutput`) the training loop runs for each task.

Written once and imported by the recipes (`plmkit pretrain`, `plmkit finetune`), the tour and the
benchmarks, so what the tour measures is what the commands train. Each returns the loss summed over the
micro-batch and the number of targets it was summed over; the loop divides by the window's total.

Batches are the collated dicts of `plmkit.data`: `input_ids` (B, T), `attention_mask` (B, T) (optional for
causal LM), and `labels` (B, T) next tokens, (B,) classes or (B, T) tags with -100 on the positions that
score nothing; QA batches carry `start_positions` and `end_positions` (B,) instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.data.tasks import IGNORE_INDEX
from plmkit.errors import ConfigError
from plmkit.evaluation.heldout import forward
from plmkit.objectives.fused_ce import model_lm_loss
from plmkit.training.loop import StepOutput, step_generator

__all__ = ["classification_step", "clm_step", "make_mlm", "span_step", "tagging_step"]


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


def make_mlm(tokenizer: Any, seed: int) -> Callable[[nn.Module, dict[str, torch.Tensor]], StepOutput]:
    """Masked LM with dynamic masking (RoBERTa): every micro-batch gets a fresh 15% / 80-10-10 mask
    from `step_generator()`, which draws from the loop's checkpointed RNG, so resumes are exact.
    With a pre-training head (`--nsp`/`--sop`)
    each window is also cut into a sentence pair and the pair loss is added, scaled so that the
    loop's division by the number of masked tokens gives mean MLM loss + mean pair loss."""
    from plmkit.models.bert import PreTrainingHead
    from plmkit.objectives.mlm import MaskingConfig, mask_tokens, mlm_loss
    from plmkit.objectives.nsp import pair_loss, pairs_from_windows

    if getattr(tokenizer, "mask_id", None) is None:
        raise ConfigError("objective=mlm needs a tokenizer with a mask token ([MASK] or <mask>)")
    roles = ("pad_id", "cls_id", "sep_id", "mask_id", "bos_id", "eos_id", "unk_id")
    special = tuple(sorted({i for r in roles if (i := getattr(tokenizer, r, None)) is not None}))
    masking = MaskingConfig(mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size, special_ids=special)
    def mlm_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
        ids, attention_mask = batch["input_ids"], batch.get("attention_mask")
        generator = step_generator(ids.device)
        head = getattr(model, "head", None)
        extra: dict[str, torch.Tensor] = {}
        if isinstance(head, PreTrainingHead):
            if tokenizer.cls_id is None or tokenizer.sep_id is None:
                raise ConfigError("--nsp/--sop need a tokenizer with [CLS] and [SEP] tokens")
            pairs = pairs_from_windows(ids, head.pair_task, tokenizer.cls_id, tokenizer.sep_id, generator)
            ids, extra = pairs["input_ids"], {"token_type_ids": pairs["token_type_ids"]}
        masked, labels = mask_tokens(ids, masking, generator, attention_mask=attention_mask)
        if extra:
            out = model(masked, attention_mask, **extra)
            loss_sum, n = mlm_loss(out.mlm_logits, labels)  # (B, T, V) logits beside the pair logits
        else:  # fused head + loss over the masked positions only
            loss_sum, n = model_lm_loss(model, labels, masked, attention_mask)
        metrics: dict[str, float] = {}
        if extra:
            pair_sum, b = pair_loss(out.pair_logits, pairs["pair_labels"])
            loss_sum = loss_sum + pair_sum * (n.clamp(min=1) / b)
            metrics["pair_loss"] = float(pair_sum.detach()) / b
        return StepOutput(loss_sum=loss_sum, num_targets=n, metrics=metrics)

    return mlm_step
