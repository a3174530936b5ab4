"""Per-token and per-sequence log-probabilities of a causal LM: the one function SFT, DPO, PPO and GRPO share.

`token_logprobs(model, input_ids, attention_mask)[b, t] = log p(input_ids[b, t] | input_ids[b, :t])` for
t >= 1, so the result lines up with `input_ids`; position 0 (nothing predicts it) and padding are 0.0.
`sequence_logprobs(..., response_mask)` sums that over the positions where `response_mask` is 1.

Padding may be on either side: plmkit's decoders derive position ids from the attention mask, so a
left-padded row gets the positions it would have alone (`plmkit.models.layers.positions_from_mask`).
For a plmkit `TaskModel` with an `LMHead`, only the hidden states of positions whose next token is
scored go through the vocabulary projection (the prompt's rows are skipped): the projection is the
largest matrix product of a small model, and a DPO or PPO batch is mostly prompt.

Shape legend: B batch, T length, V vocabulary, N scored positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plmkit.errors import ConfigError
from plmkit.models.heads import LMHead, TaskModel
from plmkit.objectives.fused_ce import linear_token_logprobs, lm_projection


def gather_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[target] without materializing the (…, V) log-softmax: (…, V), (…) -> (…).

    Computed in fp32 (a bf16 logsumexp over a large vocabulary loses the small differences DPO needs).
    """
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", model)  # DDP
    return getattr(inner, "_orig_mod", inner)  # torch.compile


def _check_inputs(input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor | None = None) -> None:
    if input_ids.dim() != 2:
        raise ConfigError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
    if attention_mask.shape != input_ids.shape:
        raise ConfigError(
            f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids "
            f"{tuple(input_ids.shape)}"
        )
    if response_mask is not None and response_mask.shape != input_ids.shape:
        raise ConfigError(
            f"response_mask shape {tuple(response_mask.shape)} differs from input_ids "
            f"{tuple(input_ids.shape)}"
        )


def _logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T, V) logits of a plmkit causal LM or of any module returning `.logits` (transformers)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    return out.logits if hasattr(out, "logits") else out


def scored_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, scored: Tensor) -> Tensor:
    """(B, T) log-probs at the positions where `scored` (B, T; position 0 never) is true, 0.0 elsewhere."""
    inner = _unwrap(model)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    # A position t is predicted by the hidden state at t - 1.
    predict_from = F.pad(scored[:, 1:], (0, 1), value=False)  # (B, T)
    if isinstance(inner, TaskModel) and isinstance(inner.head, LMHead) and inner is model:
        hidden = inner.backbone(input_ids=input_ids, attention_mask=attention_mask)  # (B, T, D)
        parts = lm_projection(inner)
        if parts is not None:  # the head's product fused with the log-softmax: no (N, V) logits
            features, weight, bias = parts
            targets = input_ids[scored]  # (N,)
            out[scored] = linear_token_logprobs(features(hidden[predict_from]), weight, targets, bias)
            return out
        logits = inner.head(hidden[predict_from])  # (N, V)
    else:
        # Prompt tuning prepends virtual tokens to the outputs: keep the positions of the real ones.
        logits = _logits(model, input_ids, attention_mask)[:, -input_ids.shape[1]:]
        logits = logits[predict_from]  # (N, V)
    out[scored] = gather_logprobs(logits, input_ids[scored])
    return out


def token_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """log p(input_ids[:, t] | input_ids[:, :t]) for every real token at t >= 1; 0.0 at t = 0 and on padding.

    (B, T) -> (B, T) float32. The first real token of a left-padded row is predicted from padding alone,
    so its value means nothing; mask it out as a response never starts there.
    """
    _check_inputs(input_ids, attention_mask)
    scored = attention_mask.bool().clone()
    scored[:, 0] = False
    return scored_logprobs(model, input_ids, attention_mask, scored)


def sequence_logprobs(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor
) -> Tensor:
    """Summed log-probs of the tokens where `response_mask` is 1, each predicted from the tokens before it.

    input_ids, attention_mask, response_mask (B, T) -> (B,) float32. Only the response positions are
    projected onto the vocabulary (see the module docstring), so this is cheaper than `token_logprobs`.
    """
    _check_inputs(input_ids, attention_mask, response_mask)
    scored = response_mask.bool() & attention_mask.bool()
    if bool(scored[:, 0].any()):
        raise ConfigError("response_mask is 1 at position 0, which no token predicts")
    return scored_logprobs(model, input_ids, attention_mask, scored).sum(-1)
