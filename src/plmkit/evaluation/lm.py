"""The language-model calls of in-context evaluation: log-likelihood requests, rolling perplexity
windows and generate-until, each with lm-evaluation-harness 0.4's token-level conventions.

Log-likelihood requests are (context ids, continuation ids). Requests that share a context (the choices
of one multiple-choice example) run the context once: its keys and values go into a `KVCache`, which
is then copied to one row per continuation, and only the continuations' tokens run again. Only the
positions that predict a continuation token go through the LM head. Groups are sorted by length so a
batch wastes little padding.

Shape legend: G context groups in a batch, R continuation rows, T tokens, D model width, V vocabulary.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.models.cache import KVCache
from plmkit.models.generation import generate
from plmkit.models.heads import TaskModel

Progress = Callable[[int], None]


def context_window(model: nn.Module) -> int:
    """The model's context length (lm-eval reads n_positions / max_position_embeddings: the same)."""
    limit = getattr(getattr(model, "config", None), "max_positions", None)
    if limit is None:
        raise ConfigError("the model's config has no max_positions: cannot size its context window")
    return int(limit)


def prefix_token_id(tokenizer: Any) -> int:
    """The token an empty context is replaced by: BOS, else EOS (lm-eval's `prefix_token_id`)."""
    for token_id in (tokenizer.bos_id, tokenizer.eos_id):
        if token_id is not None:
            return token_id
    raise ConfigError("the tokenizer has neither a BOS nor an EOS token to condition an empty context on")


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair`: trailing spaces of the context move to the continuation, the whole
    string is encoded and split at the context's length (so merges across the seam are the whole's)."""
    if context == "":
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        return ([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


@dataclass
class Scored:
    """Sum of log p(continuation | context), and whether greedy decoding would produce it."""

    logprob: float
    is_greedy: bool


def _forward_hidden(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, cache: KVCache) -> torch.Tensor:
    if isinstance(model, TaskModel):
        return model.backbone(input_ids=ids, attention_mask=mask, cache=cache)  # (B, T, D)
    return model(input_ids=ids, attention_mask=mask, cache=cache)  # logits already


def _head(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return model.head(hidden, None) if isinstance(model, TaskModel) else hidden


def _fit(ctx: list[int], cont: list[int], max_length: int) -> tuple[tuple[int, ...], list[int]]:
    """Left-truncate as lm-eval does: the model sees (ctx + cont)[-(max_length + 1):][:-1]."""
    if not cont:
        raise ConfigError("a continuation encodes to no tokens")
    if len(cont) > max_length:
        raise ConfigError(f"a continuation of {len(cont)} tokens exceeds the context window of {max_length}")
    whole = (ctx + cont)[-(max_length + 1):]
    return tuple(whole[: len(whole) - len(cont)]), cont


@torch.inference_mode()
def loglikelihoods(
    model: nn.Module,
    requests: Sequence[tuple[list[int], list[int]]],
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[Scored]:
    """Score (context ids, continuation ids) requests; results in request order.

    `batch_size` is the number of contexts in one forward pass (lm-eval's batches also count a
    context once for all its one-token continuations). Requests with identical contexts share one
    context pass (the KV cache is copied per continuation), and a token prefix that every
    context starts with (fixed demonstrations, a description) runs once for the whole call.
    """
    max_length = context_window(model)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    for i, (ctx, cont) in enumerate(requests):
        key, cont = _fit(list(ctx), list(cont), max_length)
        groups.setdefault(key, []).append((i, cont))
    # Longest first, as lm-eval: the first batch is the widest, so memory trouble shows at once.
    order = sorted(groups.items(), key=lambda kv: -(len(kv[0]) + max(len(c) for _, c in kv[1])))
    results: list[Scored | None] = [None] * len(requests)
    was_training = model.training
    model.eval()
    try:
        shared = _shared_prefix(model, [ctx for ctx, _ in order], order, device, dtype)
        start = 0
        while start < len(order):
            end = min(start + batch_size, len(order))
            rows = sum(len(members) for _, members in order[start:end])
            for i, scored in _score_batch(model, order[start:end], device, dtype, shared):
                results[i] = scored
            if progress is not None:
                progress(rows)
            start = end
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


MIN_SHARED_PREFIX = 16  # tokens; below this, copying the prefix's cache costs more than it saves


@dataclass
class SharedPrefix:
    """The keys and values of a token prefix every context of a call starts with, computed once."""

    cache: KVCache  # one row, sized for the longest context + continuation of the call
    length: int

    def expand(self, rows: int) -> KVCache:
        """A cache of `rows` copies of the prefix, ready for each row's remaining tokens."""
        cache = copy.copy(self.cache)
        cache.length = self.cache.length.clone()  # `end` advances it in place
        cache.reorder(torch.zeros(rows, dtype=torch.long, device=self.cache.key_mask.device))
        return cache


def _shared_prefix(
    model: nn.Module,
    contexts: Sequence[tuple[int, ...]],
    order: Sequence[tuple[tuple[int, ...], list[tuple[int, list[int]]]]],
    device: torch.device,
    dtype: torch.dtype,
) -> SharedPrefix | None:
    if len(contexts) < 2:
        return None
    first, n = contexts[0], min(len(c) for c in contexts) - 1  # every context keeps >= 1 own token
    for ctx in contexts[1:]:
        n = min(n, next((i for i, (a, b) in enumerate(zip(first, ctx)) if a != b), n))
    if n < MIN_SHARED_PREFIX:
        return None
    # A batch pads every context to its longest and every continuation to its longest.
    size = max(len(ctx) for ctx in contexts) + max(len(c) for _, ms in order for _, c in ms) - 1
    cache = KVCache.for_model(model.config, 1, size, dtype, device)
    ids = torch.tensor([first[:n]], device=device)
    _forward_hidden(model, ids, torch.ones_like(ids), cache)
    return SharedPrefix(cache, n)


def _score_batch(
    model: nn.Module,
    batch: Sequence[tuple[tuple[int, ...], list[tuple[int, list[int]]]]],
    device: torch.device,
    dtype: torch.dtype,
    shared: SharedPrefix | None = None,
) -> list[tuple[int, Scored]]:
    g = len(batch)
    skip = shared.length if shared is not None else 0
    ctx_len = max(len(ctx) for ctx, _ in batch) - skip
    tail = max(len(cont) for _, members in batch for _, cont in members) - 1  # continuation inputs
    if shared is not None:
        cache = shared.expand(g)
    else:
        cache = KVCache.for_model(model.config, g, ctx_len + max(tail, 0), dtype, device)
    ids = torch.zeros(g, ctx_len, dtype=torch.long)
    mask = torch.zeros(g, ctx_len, dtype=torch.long)
    for row, (ctx, _) in enumerate(batch):
        ids[row, : len(ctx) - skip] = torch.tensor(ctx[skip:])
        mask[row, : len(ctx) - skip] = 1
    hidden = _forward_hidden(model, ids.to(device), mask.to(device), cache)  # (G, T, D)
    last = (mask.sum(-1) - 1).to(device)
    first = _head(model, hidden[torch.arange(g, device=device), last]).float().log_softmax(-1)  # (G, V)

    # One row per continuation: the context's cache rows copied, then the continuations' inputs.
    members = [(row, i, cont) for row, (_, ms) in enumerate(batch) for i, cont in ms]
    cont_logps: torch.Tensor | None = None
    if tail > 0:
        cache.reorder(torch.tensor([row for row, _, _ in members], device=device))
        r = len(members)
        cont_ids = torch.zeros(r, tail, dtype=torch.long)
        cont_mask = torch.zeros(r, tail, dtype=torch.long)
        for j, (_, _, cont) in enumerate(members):
            n = len(cont) - 1
            if n:
                cont_ids[j, :n] = torch.tensor(cont[:-1])
                cont_mask[j, :n] = 1
        hidden = _forward_hidden(model, cont_ids.to(device), cont_mask.to(device), cache)  # (R, T, D)
        real = cont_mask.bool().to(device)
        # Only the positions that predict a continuation token go through the LM head.
        cont_logps = _head(model, hidden[real]).float().log_softmax(-1)  # (N real, V)
    # Every continuation token's log-probability and greedy check, gathered at once: token 0 reads its
    # group's last context position, token j > 0 the continuation pass's position j - 1.
    rows = torch.tensor([row for row, _, _ in members], device=device)
    firsts = torch.tensor([cont[0] for _, _, cont in members], device=device)
    first_lp = first[rows, firsts]  # (R,)
    first_ok = first.argmax(-1)[rows] == firsts  # (R,)
    if cont_logps is not None:
        rest = torch.tensor([t for _, _, cont in members for t in cont[1:]], device=device)
        rest_lp = cont_logps.gather(1, rest[:, None]).squeeze(1)  # (N real,)
        rest_ok = cont_logps.argmax(-1) == rest
        owner = torch.tensor([j for j, (_, _, cont) in enumerate(members) for _ in cont[1:]], device=device)
        first_lp = first_lp.index_add(0, owner, rest_lp)
        misses = torch.zeros(len(members), dtype=torch.long, device=device).index_add(
            0, owner, (~rest_ok).long()
        )
        first_ok = first_ok & (misses == 0)
    return [(i, Scored(float(lp), bool(ok))) for (_, i, _), lp, ok in zip(members, first_lp.tolist(),
                                                                             first_ok.tolist())]


def rolling_windows(
    token_ids: Sequence[int], prefix: int, max_length: int
) -> list[tuple[list[int], list[int]]]:
    """lm-eval's disjoint rolling windows (context_len=1): every token is predicted once, each window
    conditioning on up to max_length earlier tokens; the first conditions on `prefix`."""
    tokens = list(token_ids)
    windows = []
    if not tokens:
        return windows
    first = min(max_length, len(tokens))
    windows.append(([prefix] + tokens[: first - 1], tokens[:first]))
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, max_length)
        end = predicted + n
        windows.append((tokens[end - max_length - 1 : end - 1], tokens[end - n : end]))
        predicted += n
    # make_disjoint_window: the context keeps only what the continuation does not already hold.
    return [(ctx[: len(ctx) - (len(cont) - 1)], cont) for ctx, cont in windows]


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """The text before the first occurrence of any stop sequence."""
    for stop in stops:
        if stop:
            text = text.split(stop)[0]
    return text


@torch.inference_mode()
def generate_until(
    model: nn.Module,
    tokenizer: Any,
    contexts: Sequence[str],
    until: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 16,
    samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[list[str]]:
    """Continue each context until a stop sequence, EOS or `max_new_tokens`; `samples` texts each
    (greedy when samples == 1). As lm-eval, the context keeps its last (window - max_new_tokens)
    tokens and each text is cut before the first stop sequence."""
    max_length = context_window(model)
    if max_new_tokens >= max_length:
        raise ConfigError(f"max_new_tokens={max_new_tokens} leaves no room in the {max_length}-token context")
    eos = tokenizer.eos_id
    stops = list(until)
    keep = max_length - max_new_tokens
    encoded = [tokenizer.encode(c)[-keep:] for c in contexts]
    order = sorted(range(len(contexts)), key=lambda i: -len(encoded[i]))
    out: list[list[str]] = [[] for _ in contexts]
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    per_batch = max(1, batch_size // samples)
    for start in range(0, len(order), per_batch):
        chunk = order[start : start + per_batch]
        prompts = [encoded[i] for i in chunk for _ in range(samples)]
        if any(not p for p in prompts):
            raise ConfigError("a generation context encodes to no tokens")
        new = generate(
            model, prompts, max_new_tokens=max_new_tokens, do_sample=samples > 1,
            temperature=temperature, top_p=top_p, eos_token_id=eos,
            pad_token_id=eos if eos is not None else 0, stop_strings=stops, tokenizer=tokenizer,
            generator=generator if samples > 1 else None,
        )
        for j, row in enumerate(new.tolist()):
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            out[chunk[j // samples]].append(cut_at_stops(tokenizer.decode(row), stops))
        if progress is not None:
            progress(len(chunk))
    return out
