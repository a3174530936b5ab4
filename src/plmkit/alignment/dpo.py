"""Direct Preference Optimization (Rafailov et al. 2023) and IPO (Azar et al. 2023) as pure functions.

Inputs are summed response log-probs (B,) of the policy and of the frozen reference model for the chosen
and the rejected response (`plmkit.alignment.sequence_logprobs`). With the log-ratios
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
the per-example losses are
    sigmoid DPO      -p' log σ(β h) - (1 - p') log σ(-β h),   p' = p (1 - ε) + (1 - p) ε
    robust DPO       (-(1 - ε) log σ(β h) + ε log σ(-β h)) / (1 - 2ε), applied to ±h with weights p, 1 - p
    IPO              (h / n - (2p - 1) / (2β))²                (n: response tokens when given, else 1)
where p (`p_chosen`, default 1) is the probability that `chosen` is preferred (soft labels from AI
feedback) and ε the label smoothing: conservative DPO (Mitchell 2023, the smoothing of trl < 0.20's
sigmoid loss) assumes a share ε of the labels flipped and so never pushes the margin to infinity; robust
DPO (Chowdhury et al. 2024, trl 1.16's `loss_type="robust"`) removes that flip noise from the expected
loss instead, an unbiased estimate of the clean loss. At p = 1 the losses are the usual hard-label ones;
at p = 0 they equal the losses with chosen and rejected swapped.

IPO divides each response's log-ratio by its token count when lengths are given, as trl does (its authors'
normalization, which keeps β comparable across lengths); without lengths it is the paper's Eq. 17.

`preference_step` turns a collated preference batch (`plmkit.alignment.records.collate_preferences`) into
the training loop's `StepOutput`: chosen and rejected go through the policy in one forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plmkit.alignment.logprobs import sequence_logprobs
from plmkit.errors import ConfigError

LOSS_TYPES = ("sigmoid", "robust", "ipo")


def _labels(p_chosen: Tensor | float | None, like: Tensor) -> Tensor:
    if p_chosen is None:
        return torch.ones_like(like)
    p = torch.as_tensor(p_chosen, dtype=like.dtype, device=like.device)
    if bool(((p < 0) | (p > 1)).any()):
        raise ConfigError(f"p_chosen must be in [0, 1], got values from {p.min().item()} to {p.max().item()}")
    return p.expand_as(like)


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    *,
    p_chosen: Tensor | float | None = None,
) -> Tensor:
    """Sigmoid DPO, conservative with `label_smoothing` ε, soft with `p_chosen`: (B,) x 4 -> (B,)."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ConfigError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if beta <= 0:
        raise ConfigError(f"beta must be > 0, got {beta}")
    logits = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    p = _labels(p_chosen, logits)
    p = p * (1 - label_smoothing) + (1 - p) * label_smoothing
    return -p * F.logsigmoid(logits) - (1 - p) * F.logsigmoid(-logits)


def robust_dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    *,
    p_chosen: Tensor | float | None = None,
) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024, Eq. 9) with flip rate `label_smoothing`, soft with `p_chosen`:
    (B,) x 4 -> (B,)."""
    if not 0.0 <= label_smoothing < 0.5:
        raise ConfigError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if beta <= 0:
        raise ConfigError(f"beta must be > 0, got {beta}")
    logits = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    p = _labels(p_chosen, logits)
    eps = label_smoothing

    def one_way(x: Tensor) -> Tensor:
        return (-(1 - eps) * F.logsigmoid(x) + eps * F.logsigmoid(-x)) / (1 - 2 * eps)

    return p * one_way(logits) + (1 - p) * one_way(-logits)


def ipo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    *,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    p_chosen: Tensor | float | None = None,
) -> Tensor:
    """IPO's squared loss (Azar et al. 2023, Eq. 17), per-token log-ratios when lengths are given: (B,)."""
    if beta <= 0:
        raise ConfigError(f"beta must be > 0, got {beta}")
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ConfigError("ipo_loss needs both chosen_lengths and rejected_lengths, or neither")
    chosen = policy_chosen - ref_chosen
    rejected = policy_rejected - ref_rejected
    if chosen_lengths is not None:
        chosen = chosen / chosen_lengths.to(chosen.dtype).clamp(min=1.0)
        rejected = rejected / rejected_lengths.to(rejected.dtype).clamp(min=1.0)
    p = _labels(p_chosen, chosen)
    return (chosen - rejected - (2 * p - 1) / (2 * beta)) ** 2


def preference_loss(
    loss_type: str,
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    *,
    label_smoothing: float = 0.0,
    p_chosen: Tensor | float | None = None,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> Tensor:
    """`dpo_loss` ("sigmoid"), `robust_dpo_loss` ("robust") or `ipo_loss` ("ipo") by name: (B,)."""
    if loss_type == "sigmoid":
        return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, label_smoothing,
                        p_chosen=p_chosen)
    if loss_type == "robust":
        return robust_dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta,
                               label_smoothing, p_chosen=p_chosen)
    if loss_type == "ipo":
        if label_smoothing:
            raise ConfigError("label_smoothing is for the sigmoid loss; IPO has no label smoothing")
        return ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta,
                        chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths, p_chosen=p_chosen)
    raise ConfigError(f"loss_type {loss_type!r} is not one of {', '.join(LOSS_TYPES)}")


@dataclass
class PreferenceMetrics:
    """DPO's implicit rewards r = β (log π - log π_ref) and how often they rank the pair right (means
    over B)."""

    chosen_reward: float
    rejected_reward: float
    accuracy: float  # share of pairs with r_chosen > r_rejected (ties count as wrong, as in trl)
    margin: float  # mean r_chosen - r_rejected

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": v for k, v in vars(self).items()}


def implicit_rewards(policy: Tensor, ref: Tensor, beta: float) -> Tensor:
    """β (log π(y|x) - log π_ref(y|x)): DPO's reward of a response, (B,) -> (B,)."""
    return beta * (policy - ref).detach()


def preference_metrics(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float
) -> PreferenceMetrics:
    chosen = implicit_rewards(policy_chosen, ref_chosen, beta).float()
    rejected = implicit_rewards(policy_rejected, ref_rejected, beta).float()
    return PreferenceMetrics(
        chosen_reward=chosen.mean().item(),
        rejected_reward=rejected.mean().item(),
        accuracy=(chosen > rejected).float().mean().item(),
        margin=(chosen - rejected).mean().item(),
    )


# ---- batches -> log-probs ----------------------------------------------------------------------------


def pair_logprobs(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Summed response log-probs of the chosen and the rejected responses (B,) each, in one forward pass.

    The batch is what `collate_preferences` builds: `input_ids`, `attention_mask`, `response_mask` of shape
    (2B, T), the B chosen rows first, then the B rejected rows.
    """
    logps = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    return logps.chunk(2, dim=0)


def reference_context(policy: nn.Module) -> AbstractContextManager:
    """The frozen reference as the policy itself with its adapters disabled (no second copy in memory)."""
    from plmkit.peft.core import disable_adapters, hosts

    if not any(True for _ in hosts(policy)):
        raise ConfigError(
            "the policy has no adapters, so it cannot serve as its own reference: pass a reference model "
            "or precompute the reference log-probs"
        )
    return disable_adapters(policy)


def reference_logprobs(
    policy: nn.Module, batch: dict[str, Tensor], reference: nn.Module | None
) -> tuple[Tensor, Tensor]:
    """Reference log-probs of a preference batch: precomputed (`ref_chosen_logps`, `ref_rejected_logps` in
    the batch), from a separate `reference` model, or the policy with its adapters disabled when `reference`
    is None."""
    if "ref_chosen_logps" in batch:
        return batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    with torch.no_grad():
        if reference is not None:
            return pair_logprobs(reference, batch)
        with reference_context(policy):
            return pair_logprobs(policy, batch)


def response_lengths(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Response token counts of the chosen and rejected rows (B,) each."""
    return batch["response_mask"].sum(-1).chunk(2, dim=0)


@dataclass
class PreferenceConfig:
    """How `preference_step` scores a batch."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise ConfigError(f"loss_type {self.loss_type!r} is not one of {', '.join(LOSS_TYPES)}")
        if self.beta <= 0:
            raise ConfigError(f"beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


def preference_step(cfg: PreferenceConfig, reference: nn.Module | None = None) -> Callable:
    """A training-loop step function for DPO/IPO: (policy, batch) -> StepOutput with the summed pair losses.

    `reference` None: the batch carries precomputed reference log-probs, or the policy is a PEFT model whose
    base (adapters disabled) is the reference.
    """
    from plmkit.training import StepOutput

    def step(model: nn.Module, batch: dict[str, Tensor]) -> StepOutput:
        ref_chosen, ref_rejected = reference_logprobs(model, batch, reference)
        chosen, rejected = pair_logprobs(model, batch)
        chosen_len, rejected_len = response_lengths(batch)
        losses = preference_loss(
            cfg.loss_type, chosen, rejected, ref_chosen, ref_rejected, cfg.beta,
            label_smoothing=cfg.label_smoothing, p_chosen=batch.get("p_chosen"),
            chosen_lengths=chosen_len, rejected_lengths=rejected_len,
        )
        metrics = preference_metrics(chosen, rejected, ref_chosen, ref_rejected, cfg.beta).as_dict("rewards/")
        return StepOutput(loss_sum=losses.sum(), num_targets=losses.numel(), metrics=metrics)

    return step


LN2 = math.log(2.0)  # DPO's loss when the policy equals the reference
