"""Knowledge-distillation losses (Hinton et al. 2015; DistilBERT, Sanh et al. 2019, section 2).

    L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))    soft targets from the teacher
      + beta  * L_task                                            hard labels (MLM or task cross-entropy)
      + gamma * (1 - cos(h_s, h_t))                               align the last hidden states

The T^2 factor keeps the soft-target gradients on the same scale as the hard-label ones when T changes
(Hinton et al. 2015, section 2). DistilBERT uses T = 2 and weights alpha, beta, gamma = 5, 2, 1.

Each term returns `(loss_sum, count)` like every plmkit token loss, so the training loop can average over
an accumulation window; `combine_distillation` weights the per-item means.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class DistillationWeights:
    temperature: float = 2.0
    alpha_kl: float = 5.0
    beta_task: float = 2.0
    gamma_cos: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def soft_target_loss(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Sum over items of T^2 * KL(teacher || student) at temperature T, and the number of items.

    Logits are (N, C) for sequence tasks or (B, T, V) for token tasks with `mask` (B, T) selecting the
    positions that count (e.g. the masked tokens of MLM).
    """
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    t_logp = F.log_softmax(t, dim=-1)
    kl = (t_logp.exp() * (t_logp - F.log_softmax(s, dim=-1))).sum(dim=-1)  # (N,) or (B, T)
    if mask is not None:
        keep = mask.bool()
        kl = kl[keep]
    return temperature**2 * kl.sum(), torch.tensor(kl.numel(), device=kl.device)


def hidden_cosine_loss(
    student_hidden: Tensor, teacher_hidden: Tensor, attention_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Sum over real tokens of 1 - cos(h_s, h_t), and the number of tokens. Hidden states (B, T, D)."""
    cos = F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)  # (B, T)
    if attention_mask is not None:
        cos = cos[attention_mask.bool()]
    return (1.0 - cos).sum(), torch.tensor(cos.numel(), device=cos.device)


def combine_distillation(
    kl_mean: Tensor, task_mean: Tensor, cos_mean: Tensor, weights: DistillationWeights
) -> Tensor:
    """alpha * KL + beta * task + gamma * cosine, each already a mean over its items."""
    return weights.alpha_kl * kl_mean + weights.beta_task * task_mean + weights.gamma_cos * cos_mean
