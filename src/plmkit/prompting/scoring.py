"""Log-probabilities of continuations under a causal LM, and verbalizer (label-word) classification.

Works with any model whose forward is `model(input_ids, attention_mask) -> logits (B, T, V)`: a plmkit
causal LM (`gpt2_lm`, Llama) or one loaded with `plmkit.load`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from plmkit.errors import ConfigError


def _max_length(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_positions", None)


@torch.inference_mode()
def continuation_logprobs(
    model: nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 16,
) -> torch.Tensor:
    """Sum of log p(continuation tokens | context) for each (context, continuation) pair: (N,).

    Context and continuation are tokenized separately (no special tokens) and concatenated, so the
    continuation's tokens are the same whatever the context; an over-long context loses its oldest
    tokens to fit the model's `max_positions`.
    """
    device = next(model.parameters()).device
    limit = _max_length(model)
    rows: list[tuple[list[int], int]] = []  # (ids, number of continuation tokens)
    for context, continuation in pairs:
        ctx = tokenizer.encode(context, add_special_tokens=False)
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        if not cont:
            raise ConfigError(f"continuation {continuation!r} encodes to no tokens")
        ids = ctx + cont
        if limit is not None and len(ids) > limit:
            ids = ids[len(ids) - limit :]
        if len(ids) <= len(cont):
            raise ConfigError(
                f"continuation {continuation!r} leaves no room for context in {limit} positions"
            )
        rows.append((ids, len(cont)))
    was_training = model.training
    model.eval()
    out = torch.empty(len(rows))
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            # Right padding: positions come from the mask, and the padded tail is never read.
            input_ids = torch.zeros(len(chunk), width, dtype=torch.long)
            attention_mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for i, (ids, _) in enumerate(chunk):
                input_ids[i, : len(ids)] = torch.tensor(ids)
                attention_mask[i, : len(ids)] = 1
            logits = model(input_ids.to(device), attention_mask.to(device)).float()  # (B, T, V)
            logprobs = torch.log_softmax(logits, dim=-1).cpu()
            for i, (ids, n_cont) in enumerate(chunk):
                positions = torch.arange(len(ids) - n_cont, len(ids))
                targets = torch.tensor(ids[-n_cont:])
                out[start + i] = logprobs[i, positions - 1, targets].sum()
    finally:
        model.train(was_training)
    return out


@torch.inference_mode()
def next_token_logprobs(
    model: nn.Module, tokenizer: Any, prompts: Sequence[str], batch_size: int = 16
) -> torch.Tensor:
    """log p(next token | prompt) over the whole vocabulary for each prompt: (N, V)."""
    device = next(model.parameters()).device
    limit = _max_length(model)
    rows = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt, add_special_tokens=False)
        if not ids:
            raise ConfigError("an empty prompt has no next token to score")
        rows.append(ids[-limit:] if limit is not None else ids)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(ids) for ids in chunk)
            input_ids = torch.zeros(len(chunk), width, dtype=torch.long)
            attention_mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for i, ids in enumerate(chunk):
                input_ids[i, : len(ids)] = torch.tensor(ids)
                attention_mask[i, : len(ids)] = 1
            logits = model(input_ids.to(device), attention_mask.to(device)).float()  # (B, T, V)
            last = torch.tensor([len(ids) - 1 for ids in chunk], device=logits.device)
            picked = logits[torch.arange(len(chunk), device=logits.device), last]  # (B, V)
            out.append(torch.log_softmax(picked, dim=-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def score_label_words(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    verbalizer: Mapping[Any, str | Sequence[str]],
    batch_size: int = 16,
) -> torch.Tensor:
    """Log-probability of each label's word after each prompt: (N prompts, L labels), labels in the
    verbalizer's order. A label with several words scores log-sum-exp over them. Words are appended
    verbatim, so include the leading space a word takes after the prompt (" positive")."""
    if not verbalizer:
        raise ConfigError("verbalizer is empty: give {label: word}")
    words = {label: [w] if isinstance(w, str) else list(w) for label, w in verbalizer.items()}
    flat = [(label, w) for label, ws in words.items() for w in ws]
    word_ids = [tokenizer.encode(w, add_special_tokens=False) for _, w in flat]
    if all(len(ids) == 1 for ids in word_ids):
        # One forward pass per prompt reads every single-token word's probability at once.
        scores = next_token_logprobs(model, tokenizer, prompts, batch_size)[:, [ids[0] for ids in word_ids]]
    else:
        pairs = [(prompt, w) for prompt in prompts for _, w in flat]
        scores = continuation_logprobs(model, tokenizer, pairs, batch_size).view(len(prompts), len(flat))
    per_label = []
    col = 0
    for ws in words.values():
        per_label.append(torch.logsumexp(scores[:, col : col + len(ws)], dim=1))
        col += len(ws)
    return torch.stack(per_label, dim=1)


def predict_labels(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    verbalizer: Mapping[Any, str | Sequence[str]],
    batch_size: int = 16,
) -> list[Any]:
    """The label whose word the model finds most likely after each prompt."""
    labels = list(verbalizer)
    scores = score_label_words(model, tokenizer, prompts, verbalizer, batch_size)
    return [labels[i] for i in scores.argmax(dim=1).tolist()]
