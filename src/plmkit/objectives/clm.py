"""Causal language modeling (Radford et al. 2018): maximize log P(x_{t+1} | x_<=t).

Labels are already shifted: `labels[t]` is the token that position t must predict (-100: no target).
That is what `plmkit.data.store.PackedBatches` serves (windows of T + 1 ids split into inputs and
targets); `clm_labels` builds the same from unshifted, possibly padded inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clm_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token targets for (B, T) inputs: labels[t] = input_ids[t + 1], -100 at the end and wherever
    the next token is padding. (B, T) -> (B, T)."""
    labels = F.pad(input_ids[:, 1:], (0, 1), value=-100)
    if attention_mask is not None:
        next_real = F.pad(attention_mask[:, 1:], (0, 1), value=0)
        labels = labels.masked_fill(next_real == 0, -100)
    return labels


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy and the number of targets.

    loss_sum = -sum_{t: labels[t] != -100} log softmax(logits[t])[labels[t]]
    logits (B, T, V); labels (B, T), shifted (see module docstring). Returns (loss_sum (), num_targets ()).
    """
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss_sum, (labels != -100).sum()
