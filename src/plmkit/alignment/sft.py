"""Supervised fine-tuning (instruction tuning, InstructGPT's first stage): next-token loss on the response.

    loss = - Σ_{t: response_mask[t] = 1} log p(x_t | x_<t)  /  number of response tokens in the batch

The prompt is context, not a target; the EOS that `plmkit.alignment.records` appends to every response is
a target, so the model learns to stop (a model that never sees its EOS supervised rambles to max_new_tokens,
trl's long-running bug class). This is trl's `SFTTrainer` with `completion_only_loss=True`.

LoRA or full fine-tuning is the caller's choice (`plmkit.peft.apply_peft` before training); the step is
the same.
"""

from __future__ import annotations

from torch import Tensor, nn

from plmkit.alignment.logprobs import scored_logprobs
from plmkit.errors import DataError
from plmkit.training import StepOutput


def sft_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(summed negative log-likelihood of the response tokens, their number) of a collated SFT batch.

    Only response positions are projected onto the vocabulary (see `plmkit.alignment.logprobs`).
    """
    scored = batch["response_mask"].bool() & batch["attention_mask"].bool()
    scored[:, 0] = False
    num_targets = scored.sum()
    if int(num_targets) == 0:
        raise DataError("SFT batch has no response tokens to learn from")
    logps = scored_logprobs(model, batch["input_ids"], batch["attention_mask"], scored)
    return -logps.sum(), num_targets


def sft_step(model: nn.Module, batch: dict[str, Tensor]) -> StepOutput:
    """Training-loop step function for SFT (the loop divides the summed loss by the response-token count)."""
    loss_sum, num_targets = sft_loss(model, batch)
    return StepOutput(loss_sum=loss_sum, num_targets=num_targets)
