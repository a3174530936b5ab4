"""Reward models: any plmkit backbone with a scalar head, trained on preference pairs (Bradley–Terry).

A decoder reads its score at the last real token (`ScalarHead`, the layout of transformers'
`GPT2ForSequenceClassification` / `LlamaForSequenceClassification` with num_labels=1); an encoder at
[CLS] through its family's classification head with one label (`BertForSequenceClassification`, pooler
dense + tanh, num_labels=1), or, not exportable to transformers, the mean of its token states.

    loss = -log σ(r_chosen - r_rejected - margin)                    (InstructGPT Eq. 1; Llama 2's margin)
         + center_coef · (r_chosen + r_rejected)²                     (Eisenstein et al. 2023: rewards near 0)

With a soft label p (`p_chosen`, the probability that chosen is preferred) the first term is the
cross-entropy -p log σ(Δ) - (1 - p) log σ(-Δ), which is the hard loss at p = 1 and swaps the pair at 0.
The loss and the accuracy (r_chosen > r_rejected, ties wrong) are those of trl's `RewardTrainer`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plmkit.data.records import PreferencePair
from plmkit.errors import ConfigError, DataError
from plmkit.io import write_json
from plmkit.models.heads import (
    ScalarHead,
    SequenceClassificationHead,
    TaskModel,
    attach_head,
    hf_classification_head,
)

ENCODER_TYPES = ("bert", "roberta", "albert", "distilbert")
ENCODER_POOLINGS = ("cls", "mean")


def bradley_terry_loss(
    r_chosen: Tensor,
    r_rejected: Tensor,
    margin: Tensor | float | None = None,
    p_chosen: Tensor | float | None = None,
    center_coef: float = 0.0,
) -> Tensor:
    """Per-pair reward-model loss (see the module docstring): (B,), (B,) -> (B,)."""
    delta = r_chosen - r_rejected
    if margin is not None:
        delta = delta - margin
    if p_chosen is None:
        loss = -F.logsigmoid(delta)
    else:
        p = torch.as_tensor(p_chosen, dtype=delta.dtype, device=delta.device).expand_as(delta)
        if bool(((p < 0) | (p > 1)).any()):
            raise ConfigError("p_chosen must be in [0, 1]")
        loss = -p * F.logsigmoid(delta) - (1 - p) * F.logsigmoid(-delta)
    if center_coef:
        loss = loss + center_coef * (r_chosen + r_rejected) ** 2
    return loss


def pairwise_accuracy(r_chosen: Tensor, r_rejected: Tensor) -> float:
    """Share of pairs the rewards rank right (r_chosen > r_rejected; a tie counts as wrong)."""
    return (r_chosen > r_rejected).float().mean().item()


def reward_model(backbone: nn.Module, pooling: str = "cls", dropout: float = 0.1) -> TaskModel:
    """A fresh scalar head on a backbone (a loaded `TaskModel` keeps only its backbone).

    Decoders read the last real token (pooling is ignored); encoders read [CLS] through the family's
    Hugging Face classification layout (BERT/ALBERT: the pretrained pooler becomes the head's dense layer),
    or the masked mean of the token states with `pooling="mean"`.
    """
    if isinstance(backbone, TaskModel):
        backbone = backbone.backbone
    model_type = getattr(backbone.config, "model_type", "")
    std = getattr(backbone.config, "init_std", 0.02)
    if model_type not in ENCODER_TYPES:
        head = ScalarHead(backbone.config.d_model)
        nn.init.normal_(head.score.weight, std=std)
        return TaskModel(backbone, head)
    if pooling not in ENCODER_POOLINGS:
        raise ConfigError(f"reward pooling {pooling!r} is not one of {', '.join(ENCODER_POOLINGS)}")
    if pooling == "mean":
        head = SequenceClassificationHead(backbone.config.d_model, 1, "mean", None, dropout)
        return TaskModel(backbone, head)
    return attach_head(backbone, hf_classification_head(backbone, 1, "cls", dropout))


def _model_inputs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, **extra: Tensor) -> Any:
    out = model(input_ids=input_ids, attention_mask=attention_mask, **extra)
    out = out.logits if hasattr(out, "logits") else out  # a transformers ...ForSequenceClassification
    if out.dim() == 2:
        if out.shape[-1] != 1:
            raise ConfigError(f"a reward model must give one score per sequence, got {out.shape[-1]} per row")
        out = out.squeeze(-1)
    return out


def reward_scores(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, **extra: Tensor) -> Tensor:
    """One scalar reward per sequence: (B, T), (B, T) -> (B,) (float32)."""
    scores = _model_inputs(model, input_ids, attention_mask, **extra).float()
    if not bool(torch.isfinite(scores).all()):
        bad = int((~torch.isfinite(scores)).nonzero()[0, 0])
        raise DataError(f"reward model returned a non-finite score (row {bad} of the batch)")
    return scores


def save_reward_model(model: nn.Module, path: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write the reward model so that transformers loads it as `...ForSequenceClassification` (num_labels=1).

    A decoder's transformers class finds the last real token as the last one that is not `pad_token_id`,
    so config.json gets the tokenizer's pad id, and none when the tokenizer has no pad token distinct from
    EOS (a response ends in EOS, so a pad equal to it would move the read-out one token back; transformers
    then reads the last position, right for unpadded rows).
    """
    from plmkit.interop.hf import save_hf

    path = save_hf(model, path, tokenizer=tokenizer)
    backbone = model.backbone if isinstance(model, TaskModel) else model
    if getattr(backbone.config, "model_type", "") in ENCODER_TYPES:
        return path
    pad, eos = getattr(tokenizer, "pad_id", None), getattr(tokenizer, "eos_id", None)
    config_path = path / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["pad_token_id"] = pad if pad is not None and pad != eos else None
    if eos is not None:
        config["eos_token_id"] = eos
    write_json(config_path, config)
    return path


# ---- data -------------------------------------------------------------------------------------------------


def encode_reward_pairs(
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    max_length: int,
    causal: bool,
    max_prompt_length: int | None = None,
    *,
    special_tokens: bool = True,
) -> list[dict[str, Any]]:
    """Token rows for reward training: {"chosen_input_ids", "rejected_input_ids", "p_chosen"} (+ masks).

    Decoders get prompt + response + EOS (`plmkit.alignment.records`); the score is read on the EOS,
    which sees the whole text. Encoders get the tokenizer's own single-text layout ("[CLS] prompt response
    [SEP]"), cut at `max_length` from the front of the prompt so the response survives.
    """
    from plmkit.alignment.records import encode_preferences

    if causal:
        return encode_preferences(tokenizer, pairs, max_length, max_prompt_length,
                                  special_tokens=special_tokens)
    rows = []
    for i, pair in enumerate(pairs):
        if pair.chosen == pair.rejected:
            raise DataError(f"pair {i}: chosen and rejected responses are identical")
        row: dict[str, Any] = {"p_chosen": pair.p_chosen}
        for key, response in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            ids = tokenizer.encode(pair.prompt + response, add_special_tokens=True)
            if len(ids) > max_length:
                # Keep the first special token ([CLS]) and the end (the response and [SEP]).
                ids = ids[:1] + ids[len(ids) - max_length + 1:]
            row[f"{key}_input_ids"] = ids
            row[f"{key}_response_mask"] = [1] * len(ids)
        rows.append(row)
    return rows


# ---- training -----------------------------------------------------------------------------------------


def pair_rewards(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Rewards of the chosen and rejected rows of a collated preference batch, (B,) each, one forward."""
    scores = reward_scores(model, batch["input_ids"], batch["attention_mask"])
    return scores.chunk(2, dim=0)


def reward_step(center_coef: float = 0.0, margin_key: str = "margin") -> Callable:
    """A training-loop step function: Bradley–Terry loss summed over the pairs, accuracy and margin logged."""
    from plmkit.training import StepOutput

    def step(model: nn.Module, batch: dict[str, Tensor]) -> StepOutput:
        chosen, rejected = pair_rewards(model, batch)
        losses = bradley_terry_loss(
            chosen, rejected, batch.get(margin_key), batch.get("p_chosen"), center_coef
        )
        metrics = {
            "accuracy": pairwise_accuracy(chosen.detach(), rejected.detach()),
            "margin": (chosen - rejected).mean().item(),
        }
        return StepOutput(loss_sum=losses.sum(), num_targets=losses.numel(), metrics=metrics)

    return step


@torch.no_grad()
def evaluate_pairs(
    model: nn.Module, rows: Sequence[dict[str, Any]], pad_id: int, batch_size: int = 32
) -> dict[str, float]:
    """Held-out pairwise accuracy, mean loss and margin of a reward model on encoded preference rows."""
    from plmkit.alignment.records import collate_preferences

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chosen_all, rejected_all, p_all = [], [], []
    for start in range(0, len(rows), batch_size):
        batch = collate_preferences(rows[start: start + batch_size], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        chosen, rejected = pair_rewards(model, batch)
        chosen_all.append(chosen)
        rejected_all.append(rejected)
        p_all.append(batch["p_chosen"])
    model.train(was_training)
    chosen, rejected, p = torch.cat(chosen_all), torch.cat(rejected_all), torch.cat(p_all)
    # Accuracy against the label: a soft label below 1/2 says rejected is the better response.
    right = torch.where(p >= 0.5, chosen > rejected, rejected > chosen)
    return {
        "accuracy": right.float().mean().item(),
        "loss": bradley_terry_loss(chosen, rejected, p_chosen=p).mean().item(),
        "margin": (chosen - rejected).mean().item(),
    }
