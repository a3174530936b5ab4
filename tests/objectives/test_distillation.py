"""Distillation losses: golden values by hand, and DistilBERT's own formulation on random logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from plmkit.objectives.distillation import (
    DistillationWeights,
    combine_distillation,
    hidden_cosine_loss,
    soft_target_loss,
)


def test_soft_target_loss_golden():
    # teacher [2, 0], student [0, 0], T = 2: p_t = softmax([1, 0]), p_s = [0.5, 0.5]
    p = math.e / (math.e + 1)
    kl = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    loss_sum, n = soft_target_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]]), temperature=2.0)
    assert int(n) == 1
    assert float(loss_sum) == pytest.approx(4 * kl, rel=1e-6)
    assert 4 * kl == pytest.approx(0.443776, abs=1e-6)


def test_soft_target_loss_is_zero_when_student_matches_teacher():
    logits = torch.randn(3, 7)
    loss_sum, _ = soft_target_loss(logits, logits.clone(), temperature=3.0)
    assert float(loss_sum) == pytest.approx(0.0, abs=1e-6)


def test_soft_target_loss_equals_distilbert_formulation_with_mask():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]])
    loss_sum, n = soft_target_loss(student, teacher, temperature=2.0, mask=mask)
    # DistilBERT's distiller.py: KLDivLoss(batchmean) on the selected rows, times T^2.
    keep = mask.bool()
    reference = (
        F.kl_div(
            F.log_softmax(student[keep] / 2.0, -1), F.softmax(teacher[keep] / 2.0, -1), reduction="batchmean"
        )
        * 4.0
    )
    assert int(n) == 7
    assert float(loss_sum / n) == pytest.approx(float(reference), rel=1e-5)


def test_hidden_cosine_loss_golden_and_mask():
    student = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [5.0, 5.0]]])
    teacher = torch.tensor([[[0.0, 1.0], [2.0, 2.0], [-1.0, -1.0]]])
    loss_sum, n = hidden_cosine_loss(student, teacher, torch.tensor([[1, 1, 0]]))
    assert int(n) == 2
    assert float(loss_sum) == pytest.approx(1.0)  # orthogonal: 1, parallel: 0, padding ignored
    all_sum, _ = hidden_cosine_loss(student, teacher)
    assert float(all_sum) == pytest.approx(3.0)  # opposite: 2


def test_combine_uses_distilbert_defaults():
    weights = DistillationWeights()
    assert (weights.temperature, weights.alpha_kl, weights.beta_task, weights.gamma_cos) == (
        2.0,
        5.0,
        2.0,
        1.0,
    )
    total = combine_distillation(torch.tensor(1.0), torch.tensor(10.0), torch.tensor(100.0), weights)
    assert float(total) == pytest.approx(5 + 20 + 100)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        DistillationWeights(temperature=0.0)
