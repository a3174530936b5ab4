"""Generation for encoder-decoders (T5, BART): greedy, sampling, beam search, batched.

The encoder runs once per call. Each cross-attention layer projects the encoder output to keys and values
on the first decoder step and keeps them in `Seq2SeqCache.cross`; the decoder's own keys and values go
into a static `KVCache`. Beam search expands the encoder output to B*K rows once; the K beams of a prompt
share it, so reordering beams touches only the self-attention cache.

Scoring follows transformers' `generate` so outputs match on the same weights: beam candidates are
ranked by summed log-probabilities, a finished hypothesis scores sum(log p) / (new length ** length_penalty),
and the no-repeat-n-gram ban (Paulus et al. 2018) sets banned tokens' log-probabilities to -inf after the
log-softmax (so the remaining ones are not renormalized).

Shape legend: B batch, S source length, N new tokens, V vocabulary, K beams.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.models.cache import KVCache
from plmkit.models.generation import BeamState, Sampling, advance_beams, next_tokens


class Seq2SeqCache:
    """`self_attn` (a `KVCache` over decoder positions) and per-layer cross-attention (k, v) (B, H, S, Dh)."""

    def __init__(self, self_attn: KVCache, num_layers: int):
        self.self_attn = self_attn
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers

    @classmethod
    def for_model(
        cls, config: object, batch_size: int, max_length: int, dtype: torch.dtype, device: torch.device
    ) -> Seq2SeqCache:
        """Sized from an encoder-decoder config (`num_decoder_layers`, `num_heads`, `head_dim`)."""
        n = config.num_decoder_layers
        kv = KVCache(n, batch_size, config.num_heads, config.head_dim, max_length, dtype, device)
        return cls(kv, n)

    def reorder(self, rows: torch.Tensor) -> None:
        self.self_attn.reorder(rows)


def ban_repeated_ngrams(scores: torch.Tensor, history: torch.Tensor, n: int) -> torch.Tensor:
    """Set to -inf every token that would complete an n-gram already present in its row's history.

    scores (R, V); history (R, L) decoder tokens so far (start token included, as transformers does).
    """
    if n <= 0 or history.shape[1] + 1 < n:
        return scores
    rows = history.tolist()
    banned_rows, banned_tokens = [], []
    for r, seq in enumerate(rows):
        tail = tuple(seq[len(seq) - n + 1 :]) if n > 1 else ()
        for i in range(len(seq) - n + 1):
            if tuple(seq[i : i + n - 1]) == tail:
                banned_rows.append(r)
                banned_tokens.append(seq[i + n - 1])
    if banned_rows:
        scores = scores.clone()
        scores[banned_rows, banned_tokens] = float("-inf")
    return scores


def _parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(backbone with encode/decode, LM head) of `TaskModel(T5Model | BartModel, LMHead)`."""
    backbone, head = getattr(model, "backbone", None), getattr(model, "head", None)
    if backbone is None or not hasattr(backbone, "encode") or not hasattr(backbone, "decode"):
        raise ConfigError(
            f"{type(model).__name__} is not an encoder-decoder LM (TaskModel(T5Model|BartModel, LMHead))"
        )
    return backbone, head


def _sample(
    step,
    history: torch.Tensor,
    max_new_tokens: int,
    sampling: Sampling,
    eos_id: int | None,
    pad_id: int,
    no_repeat_ngram_size: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    b, device = history.shape[0], history.device
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    seen = torch.zeros(b, 1, dtype=torch.bool, device=device)
    logits = step(history)
    out: list[torch.Tensor] = []
    for i in range(max_new_tokens):
        scores = ban_repeated_ngrams(logits.float(), history, no_repeat_ngram_size)
        if seen.shape[1] != scores.shape[1]:
            seen = torch.zeros_like(scores, dtype=torch.bool)
        token = next_tokens(scores, seen, sampling, generator)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        out.append(token)
        if eos_id is not None:
            finished |= token == eos_id
        history = torch.cat([history, token[:, None]], 1)
        if i == max_new_tokens - 1 or bool(finished.all()):
            break
        logits = step(token[:, None])
    return torch.stack(out, 1)


def _beam_search(
    step,
    reorder,
    history: torch.Tensor,
    max_new_tokens: int,
    num_beams: int,
    length_penalty: float,
    early_stopping: bool,
    eos_id: int | None,
    pad_id: int,
    no_repeat_ngram_size: int,
) -> torch.Tensor:
    """transformers' vectorized beam search (`_beam_search`), with the n-gram ban as its one processor."""
    bk, device = history.shape[0], history.device
    b, k = bk // num_beams, num_beams
    n_eos = 0 if eos_id is None else 1
    keep = max(2, 1 + n_eos) * k  # enough candidates that K survive even if some end
    top_k_mask = torch.arange(keep, device=device) < k
    beams = BeamState.start(b, k, max_new_tokens, pad_id, device)
    start = history  # (B*K, 1): the decoder start token
    logits = step(history)
    for i in range(max_new_tokens):
        log_probs = logits.float().log_softmax(-1)
        full_history = torch.cat([start, beams.running[:, :, :i].reshape(bk, i)], 1)
        log_probs = ban_repeated_ngrams(log_probs, full_history, no_repeat_ngram_size)
        v = log_probs.shape[-1]
        scores = (log_probs.view(b, k, v) + beams.running_scores[:, :, None]).view(b, k * v)
        top_scores, top_idx = torch.topk(scores, keep)  # (B, 2K)
        from_beam, tokens = top_idx // v, top_idx % v
        hits = tokens == eos_id if eos_id is not None else torch.zeros_like(tokens, dtype=torch.bool)
        next_idx = advance_beams(beams, i, top_scores, from_beam, tokens, hits, top_k_mask, length_penalty,
                                 early_stopping)
        if i == max_new_tokens - 1 or beams.done(early_stopping):
            break
        rows = (from_beam.gather(1, next_idx) + torch.arange(b, device=device)[:, None] * k).flatten()
        reorder(rows)
        logits = step(beams.running[:, :, i].reshape(bk, 1))
    best_seq = beams.finished_seqs[:, 0]  # (B, N)
    if eos_id is None:
        return best_seq
    # Trim to the longest hypothesis: after its EOS a row holds only padding.
    is_eos = best_seq == eos_id
    ends = torch.where(is_eos.any(-1), is_eos.long().argmax(-1) + 1, best_seq.shape[1])
    return best_seq[:, : int(ends.max())]


@torch.inference_mode()
def generate_seq2seq(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    inputs_embeds: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool = False,
    no_repeat_ngram_size: int = 0,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    decoder_start_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Generate targets for a batch of sources (B, S) (right-padded, with `attention_mask`).

    Returns the new tokens (B, N) without the start token, `pad_token_id` after a row's EOS.
    Token ids default to the model config's (`eos_token_id`, `pad_token_id`, `decoder_start_token_id`).
    """
    backbone, head = _parts(model)
    cfg = backbone.config
    eos_id = cfg.eos_token_id if eos_token_id is None else eos_token_id
    pad_id = cfg.pad_token_id if pad_token_id is None else pad_token_id
    start_id = cfg.decoder_start_token_id if decoder_start_token_id is None else decoder_start_token_id
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_beams < 1:
        raise ConfigError(f"num_beams must be >= 1, got {num_beams}")
    if num_beams > 1 and do_sample:
        raise ConfigError("beam search with sampling is not supported: use num_beams=1 or do_sample=False")
    sampling = Sampling(do_sample, temperature, top_k, top_p)
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        if input_ids is not None:
            input_ids = input_ids.to(param.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(param.device)
        encoder_hidden = backbone.encode(input_ids, attention_mask, inputs_embeds)  # (B, S, D)
        b = encoder_hidden.shape[0]
        if num_beams > 1:
            encoder_hidden = encoder_hidden.repeat_interleave(num_beams, 0)
            if attention_mask is not None:
                attention_mask = attention_mask.repeat_interleave(num_beams, 0)
        rows = b * num_beams
        cache = Seq2SeqCache.for_model(cfg, rows, max_new_tokens + 1, param.dtype, param.device)

        def step(tokens: torch.Tensor) -> torch.Tensor:
            hidden = backbone.decode(tokens, encoder_hidden, attention_mask, cache=cache)
            return head(hidden[:, -1:])[:, -1]  # (R, V)

        history = torch.full((rows, 1), start_id, dtype=torch.long, device=param.device)
        if num_beams == 1:
            return _sample(
                step, history, max_new_tokens, sampling, eos_id, pad_id, no_repeat_ngram_size, generator
            )
        return _beam_search(
            step,
            cache.reorder,
            history,
            max_new_tokens,
            num_beams,
            length_penalty,
            early_stopping,
            eos_id,
            pad_id,
            no_repeat_ngram_size,
        )
    finally:
        model.train(was_training)


def generate_texts(
    model: nn.Module,
    tokenizer: object,
    sources: Sequence[str],
    max_source_length: int = 512,
    batch_size: int = 32,
    **kwargs: object,
) -> list[str]:
    """Generate and decode targets for source strings, `batch_size` at a time.

    Sources are encoded as in training (`plmkit.data.text2text.encode_examples`): tokens without the
    tokenizer's own special tokens, then its EOS, cut to `max_source_length`.
    """
    out: list[str] = []
    pad_id = model.config.pad_token_id
    eos = getattr(tokenizer, "eos_id", None)
    tail = [] if eos is None else [eos]
    for i in range(0, len(sources), batch_size):
        encoded = [
            tokenizer.encode(s, add_special_tokens=False)[: max_source_length - len(tail)] + tail
            for s in sources[i : i + batch_size]
        ]
        t = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), t), pad_id, dtype=torch.long)
        mask = torch.zeros(len(encoded), t, dtype=torch.long)
        for r, e in enumerate(encoded):
            ids[r, : len(e)] = torch.tensor(e, dtype=torch.long)
            mask[r, : len(e)] = 1
        new = generate_seq2seq(model, ids, mask, **kwargs)
        out.extend(tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in new)
    return out
