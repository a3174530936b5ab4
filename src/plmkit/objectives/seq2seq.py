"""The encoder-decoder loss: cross-entropy of each target token given the source and the targets before it.

Labels are the targets themselves (B, T) with -100 where there is no target (padding); the decoder
inputs are the labels shifted right behind a start token (`plmkit.models.layers.shift_right`), so unlike
causal LM no shift happens here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def seq2seq_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and the number of targets.

    loss_sum = -sum_t log softmax(logits[t])[labels[t]] over t with labels[t] != -100.
    logits (B, T, V), labels (B, T). Returns (loss_sum (), num_targets ()).
    """
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss_sum, (labels != -100).sum()


def decoder_inputs(labels: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """labels (B, T) -> decoder inputs (B, T): start token, then labels[:-1]; -100 becomes pad."""
    out = labels.new_full(labels.shape, pad_id)
    out[:, 1:] = labels[:, :-1]
    out[:, 0] = start_id
    return out.masked_fill(out == -100, pad_id)
