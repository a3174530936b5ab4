"""Text generation over a KV cache: greedy, sampling (temperature, top-k, top-p), beam search.

The decoding strategies only see a *step function*: `step(tokens (B, T), mask (B, T) | None) ->
logits (B, V)` for the last position, which feeds the tokens through the model and extends its cache,
plus `reorder(rows)` for beam search. `decoder_step` builds both for a decoder-only model; an
encoder-decoder can build its own and reuse `sample_tokens` / `beam_search` unchanged.

The cache is preallocated for prompt + max_new_tokens, so each decode step has one static shape: with
`compile=True` the step runs through `torch.compile` (and CUDA graphs on a GPU).

Shape legend: B batch, T prompt length, N new tokens, V vocabulary, K beams.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.models.cache import KVCache
from plmkit.models.heads import LMHead, TaskModel

StepFn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class Sampling:
    """How to turn next-token logits into a token. The defaults are greedy decoding."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    repetition_penalty: float = 1.0  # 1.0: off (Keskar et al. 2019, CTRL sec. 4.1)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature} (greedy: do_sample=False)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


def penalize_repetition(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty on tokens already in the sequence: positive scores / penalty, negative * penalty.

    scores (B, V); seen (B, V) bool.
    """
    if penalty == 1.0:
        return scores
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalized, scores)


def prompt_tokens(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, vocab_size: int
) -> torch.Tensor:
    """(B, V) bool: which tokens occur among each row's real (unpadded) prompt tokens."""
    real = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
    counts = torch.zeros(input_ids.shape[0], vocab_size, dtype=torch.long, device=input_ids.device)
    return counts.scatter_add_(1, input_ids, real) > 0


def filter_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest scores per row, -inf elsewhere."""
    if k <= 0 or k >= scores.shape[-1]:
        return scores
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def filter_top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of tokens whose probability
    reaches p, always at least one."""
    if p >= 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(-1).cumsum(-1)
    remove_sorted = cumulative <= 1 - p
    remove_sorted[..., -1] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return scores.masked_fill(remove, float("-inf"))


def next_tokens(
    logits: torch.Tensor, seen: torch.Tensor, sampling: Sampling, generator: torch.Generator | None
) -> torch.Tensor:
    """logits (B, V) -> tokens (B,), in transformers' processor order: penalty, temperature, top-k, top-p."""
    scores = penalize_repetition(logits.float(), seen, sampling.repetition_penalty)
    if not sampling.do_sample:
        return scores.argmax(-1)
    scores = scores / sampling.temperature
    scores = filter_top_p(filter_top_k(scores, sampling.top_k), sampling.top_p)
    return torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(-1)


def sample_tokens(
    step: StepFn,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    max_new_tokens: int,
    sampling: Sampling,
    eos_ids: Sequence[int] = (),
    pad_id: int = 0,
    stop: Callable[[int, torch.Tensor], bool] | None = None,
    streamer: Callable[[torch.Tensor], None] | None = None,
    generator: torch.Generator | None = None,
    seen: torch.Tensor | None = None,
    step_decode: StepFn | None = None,
) -> torch.Tensor:
    """Greedy or sampled decoding; each row stops on its own at EOS or a stop condition.

    `step` runs the prompt; `step_decode` (default `step`) runs each new token. `stop(row, tokens)` is
    asked for unfinished rows with that row's new tokens. `seen` (B, V) marks tokens already in the
    input for the repetition penalty. Returns new tokens (B, N), `pad_id` after a row finishes.
    """
    step_decode = step_decode or step
    b = input_ids.shape[0]
    device = input_ids.device
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    logits = step(input_ids, attention_mask)  # (B, V)
    if seen is None:
        seen = torch.zeros(b, logits.shape[-1], dtype=torch.bool, device=device)
    out: list[torch.Tensor] = []
    for i in range(max_new_tokens):
        token = next_tokens(logits, seen, sampling, generator)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        out.append(token)
        if streamer is not None:
            streamer(token)
        if eos.numel():
            finished |= torch.isin(token, eos)
        if stop is not None:
            new = torch.stack(out, 1)
            for row in (~finished).nonzero().flatten().tolist():
                if stop(row, new[row]):
                    finished[row] = True
        if i == max_new_tokens - 1 or bool(finished.all()):
            break
        if sampling.repetition_penalty != 1.0:
            seen[torch.arange(b, device=device), token] = True
        logits = step_decode(token[:, None], None)
    return torch.stack(out, 1) if out else input_ids.new_zeros(b, 0)


def beam_search(
    step: StepFn,
    reorder: Callable[[torch.Tensor], None],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    max_new_tokens: int,
    num_beams: int,
    length_penalty: float = 1.0,
    early_stopping: bool = False,
    eos_ids: Sequence[int] = (),
    pad_id: int = 0,
    repetition_penalty: float = 1.0,
) -> torch.Tensor:
    """Beam search with transformers' scoring, so outputs match its `generate(num_beams=K)`.

    input_ids (B*K, T), each prompt repeated K times; the step function's cache holds B*K rows.
    A finished hypothesis scores sum(log p) / (new length ** length_penalty). With early_stopping the
    search ends once K hypotheses are finished; without, once no running beam can beat the worst
    finished one at its current length. Returns new tokens (B, N) of the best hypothesis per prompt.
    """
    bk, t = input_ids.shape
    b, k, device = bk // num_beams, num_beams, input_ids.device
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    keep = max(2, 1 + eos.numel()) * k  # enough candidates that K survive even if some end
    top_k_mask = torch.arange(keep, device=device) < k
    beams = BeamState.start(b, k, max_new_tokens, pad_id, device)
    seen = torch.zeros(bk, 1, dtype=torch.bool, device=device)
    logits = step(input_ids, attention_mask)  # (B*K, V)
    v = logits.shape[-1]
    if repetition_penalty != 1.0:
        seen = prompt_tokens(input_ids, attention_mask, v)
    for i in range(max_new_tokens):
        log_probs = logits.float().log_softmax(-1)
        if repetition_penalty != 1.0:
            log_probs = penalize_repetition(log_probs, seen, repetition_penalty)
        scores = (log_probs.view(b, k, v) + beams.running_scores[:, :, None]).view(b, k * v)
        top_scores, top_idx = torch.topk(scores, keep)  # (B, 2K)
        from_beam = top_idx // v
        tokens = top_idx % v
        hits = torch.isin(tokens, eos) if eos.numel() else torch.zeros_like(tokens, dtype=torch.bool)
        next_idx = advance_beams(beams, i, top_scores, from_beam, tokens, hits, top_k_mask, length_penalty,
                                 early_stopping)
        if i == max_new_tokens - 1 or beams.done(early_stopping):
            break
        rows = (from_beam.gather(1, next_idx) + torch.arange(b, device=device)[:, None] * k).flatten()
        reorder(rows)
        new_tokens = beams.running[:, :, i].reshape(bk)
        if repetition_penalty != 1.0:
            seen = seen.index_select(0, rows)
            seen[torch.arange(bk, device=device), new_tokens] = True
        logits = step(new_tokens[:, None], None)
    best = beams.finished_seqs[:, 0]  # (B, N)
    lengths = (best != pad_id).long()
    n = int(lengths.cumsum(-1).argmax(-1).max()) + 1 if best.numel() else 0
    return best[:, : max(n, 1)]


def lm_kind(model: nn.Module) -> str:
    """What a model generates with: "causal" (a decoder-only LM), "seq2seq" (an encoder-decoder with an LM
    head) or "encoder" (anything else: masked LMs, classifiers, bare backbones)."""
    backbone, head = getattr(model, "backbone", model), getattr(model, "head", None)
    if not isinstance(head, LMHead):
        return "encoder"
    if hasattr(backbone, "encode") and hasattr(backbone, "decode"):
        return "seq2seq"
    return "causal" if hasattr(model.config, "num_kv_heads") else "encoder"


def decoder_step(model: nn.Module, cache: KVCache) -> StepFn:
    """The step function for a decoder-only causal LM (`TaskModel(backbone, LMHead)`) over `cache`.

    Only the last position goes through the LM head: the prompt's other logits are never used.
    """
    if isinstance(model, TaskModel):
        backbone, head = model.backbone, model.head

        def step(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            hidden = backbone(input_ids=tokens, attention_mask=mask, cache=cache)  # (B, T, D)
            return head(hidden[:, -1:], None)[:, -1]  # (B, V)
    else:

        def step(tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            return model(input_ids=tokens, attention_mask=mask, cache=cache)[:, -1]

    return step


def longrope_context(config: object) -> int | None:
    """The pretraining context of a LongRoPE model (Phi-3), past which it rotates with its long factors."""
    scaling = getattr(config, "rope_scaling", None)
    if getattr(scaling, "rope_type", None) != "longrope":
        return None
    return scaling.original_max_positions or config.max_positions


class LongRopeRestart:
    """Decoding a LongRoPE model across its pretraining context, as transformers' Phi-3 does.

    Up to the context the keys are rotated with the short factors, past it with the long ones, so keys
    cached before the switch are stale: the step whose slots first pass the context rebuilds the cache
    from every token so far, once; every other step is the plain cached step.
    """

    def __init__(
        self, model: nn.Module, rows: int, max_length: int, dtype: torch.dtype, device: torch.device
    ):
        self.model, self.rows, self.max_length = model, rows, max_length
        self.dtype, self.device = dtype, device
        self.context = longrope_context(model.config)
        self.ids = torch.zeros(rows, 0, dtype=torch.long, device=device)  # (R, L) everything so far
        self.mask = torch.zeros(rows, 0, dtype=torch.long, device=device)
        self.cache = self._new_cache()
        self.restarted = False

    def _new_cache(self) -> KVCache:
        return KVCache.for_model(self.model.config, self.rows, self.max_length, self.dtype, self.device)

    def step(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        new_mask = torch.ones_like(tokens) if mask is None else mask.long()
        self.ids = torch.cat([self.ids, tokens], 1)
        self.mask = torch.cat([self.mask, new_mask], 1)
        past = self.ids.shape[1] - tokens.shape[1]
        if not self.restarted and 0 < past <= self.context < self.ids.shape[1]:
            self.restarted = True
            self.cache = self._new_cache()
            return decoder_step(self.model, self.cache)(self.ids, self.mask)
        return decoder_step(self.model, self.cache)(tokens, mask)

    def reorder(self, rows: torch.Tensor) -> None:
        self.ids, self.mask = self.ids.index_select(0, rows), self.mask.index_select(0, rows)
        self.cache.reorder(rows)


class SlidingWindow:
    """Decoding past the context window as nanoGPT's sampler does: every token is predicted from at most
    the last `context` tokens of its row.

    Inside the window the cache grows as usual. Once a row would exceed `context` positions, the window
    slides by one token and the cache is rebuilt from the window's tokens (positions restart at 0), so a
    learned position table is never indexed past its end. After the window first fills, each step is
    a prefill of `context` tokens: exact, and as costly as nanoGPT's recompute-everything loop.
    """

    def __init__(self, model: nn.Module, rows: int, context: int, dtype: torch.dtype, device: torch.device):
        self.model, self.context, self.dtype, self.device = model, context, dtype, device
        self.ids = torch.zeros(rows, 0, dtype=torch.long, device=device)  # (R, L) everything so far
        self.mask = torch.zeros(rows, 0, dtype=torch.long, device=device)  # (R, L) 1 = real token
        self.cache: KVCache | None = None

    def _rebuild(self) -> torch.Tensor:
        windows = [row[m.bool()][-self.context:].tolist() for row, m in zip(self.ids, self.mask)]
        ids, mask = left_pad(windows, 0)
        self.cache = KVCache.for_model(self.model.config, ids.shape[0], self.context, self.dtype, self.device)
        return decoder_step(self.model, self.cache)(ids.to(self.device), mask.to(self.device))

    def step(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        new_mask = torch.ones_like(tokens) if mask is None else mask.long()
        self.ids = torch.cat([self.ids, tokens], 1)
        self.mask = torch.cat([self.mask, new_mask], 1)
        cache = self.cache
        if cache is None or int((cache.seen + new_mask.sum(-1)).max()) > self.context:
            return self._rebuild()
        return decoder_step(self.model, cache)(tokens, mask)

    def reorder(self, rows: torch.Tensor) -> None:
        self.ids, self.mask = self.ids.index_select(0, rows), self.mask.index_select(0, rows)
        if self.cache is not None:
            self.cache.reorder(rows)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> left-padded ids (B, T) and mask (B, T)."""
    t = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), t), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), t, dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, t - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, t - len(p):] = 1
    return ids, mask


# What `generate` does for an option neither the call nor the model's generation_config sets.
GENERATE_DEFAULTS = {
    "do_sample": False, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0,
    "num_beams": 1, "length_penalty": 1.0, "eos_token_id": None, "pad_token_id": None,
}


@torch.inference_mode()
def generate(
    model: nn.Module,
    input_ids: torch.Tensor | Sequence[Sequence[int]],
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 32,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    num_beams: int | None = None,
    length_penalty: float | None = None,
    early_stopping: bool = False,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    stop_strings: Sequence[str] = (),
    tokenizer: object | None = None,
    streamer: Callable[[torch.Tensor], None] | None = None,
    generator: torch.Generator | None = None,
    compile: bool = False,
    sliding_window: bool = False,
) -> torch.Tensor:
    """Continue each prompt of a decoder-only LM; returns the new tokens (B, N), padded after a row ends.

    `input_ids` is a left-padded (B, T) tensor with `attention_mask`, or a list of token lists (padded
    here). Each row stops on its own at `eos_token_id` or when its decoded continuation contains one of
    `stop_strings` (needs `tokenizer`); generation ends when every row has stopped or after
    `max_new_tokens`. `streamer(tokens (B,))` is called with every new token. `compile=True` runs the
    decode step through `torch.compile`. A prompt plus `max_new_tokens` longer than the model's context
    window (`config.max_positions`) is an error unless `sliding_window=True`: then each token is
    predicted from the last `max_positions` tokens (see `SlidingWindow`; `compile` is not used then).

    Sampling options and `eos_token_id` / `pad_token_id` left as None come from the model's
    `generation_config` (what `plmkit.load` read from generation_config.json: a Llama 3 checkpoint samples
    at temperature 0.6 and stops at either of its two EOS ids), else from `GENERATE_DEFAULTS` (greedy).
    """
    config = model.config
    defaults = {**GENERATE_DEFAULTS, **(getattr(model, "generation_config", None) or {})}
    do_sample = defaults["do_sample"] if do_sample is None else do_sample
    temperature = defaults["temperature"] if temperature is None else temperature
    top_k = defaults["top_k"] if top_k is None else top_k
    top_p = defaults["top_p"] if top_p is None else top_p
    repetition_penalty = defaults["repetition_penalty"] if repetition_penalty is None else repetition_penalty
    num_beams = defaults["num_beams"] if num_beams is None else num_beams
    length_penalty = defaults["length_penalty"] if length_penalty is None else length_penalty
    eos_token_id = defaults["eos_token_id"] if eos_token_id is None else eos_token_id
    pad_token_id = defaults["pad_token_id"] if pad_token_id is None else pad_token_id
    eos_ids = [] if eos_token_id is None else (
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    )
    if pad_token_id is None:
        pad_token_id = eos_ids[0] if eos_ids else 0
    if not isinstance(input_ids, torch.Tensor):
        if not input_ids or any(len(p) == 0 for p in input_ids):
            raise ConfigError("generate needs at least one non-empty prompt")
        input_ids, attention_mask = left_pad(input_ids, pad_token_id)
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    attention_mask = None if attention_mask is None else attention_mask.to(device)
    b, t = input_ids.shape
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_beams < 1:
        raise ConfigError(f"num_beams must be >= 1, got {num_beams}")
    context = getattr(config, "max_positions", None)
    longest = t if attention_mask is None else int(attention_mask.sum(-1).max())
    slide = context is not None and longest + max_new_tokens > context
    if slide and not sliding_window:
        raise ConfigError(
            f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the model's context "
            f"window of {context} tokens (sliding_window=True keeps generating on the last {context})"
        )
    if stop_strings and tokenizer is None:
        raise ConfigError("stop_strings need a tokenizer to decode the continuation")
    sampling = Sampling(do_sample, temperature, top_k, top_p, repetition_penalty)
    dtype = next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    try:
        if slide:
            window = SlidingWindow(model, b * num_beams, context, dtype, device)
            step, reorder = window.step, window.reorder
        elif longrope_context(config) is not None:
            restart = LongRopeRestart(model, b * num_beams, t + max_new_tokens, dtype, device)
            step, reorder = restart.step, restart.reorder
        else:
            cache = KVCache.for_model(config, b * num_beams, t + max_new_tokens, dtype, device)
            step, reorder = decoder_step(model, cache), cache.reorder
        if num_beams > 1:
            if do_sample:
                raise ConfigError("beam search with sampling is not supported: use num_beams=1 or greedy")
            ids = input_ids.repeat_interleave(num_beams, 0)
            mask = None if attention_mask is None else attention_mask.repeat_interleave(num_beams, 0)
            return beam_search(
                step, reorder, ids, mask, max_new_tokens, num_beams, length_penalty,
                early_stopping, eos_ids, pad_token_id, repetition_penalty,
            )
        stop = None
        if stop_strings:

            def stop(row: int, new: torch.Tensor) -> bool:
                text = tokenizer.decode(new.tolist())
                return any(s in text for s in stop_strings)

        seen = None
        if repetition_penalty != 1.0:
            seen = prompt_tokens(input_ids, attention_mask, config.vocab_size)
        step_decode = torch.compile(step, dynamic=False) if compile and not slide else step
        return sample_tokens(
            step, input_ids, attention_mask, max_new_tokens, sampling, eos_ids, pad_token_id, stop,
            streamer, generator, seen, step_decode,
        )
    finally:
        model.train(was_training)


@dataclass
class BeamState:
    """Hypotheses of a batched beam search: K running and K finished per row, sequences (B, K, N)."""

    running: torch.Tensor
    running_scores: torch.Tensor  # (B, K) summed log-probs
    finished_seqs: torch.Tensor
    finished_scores: torch.Tensor  # (B, K) length-penalized
    is_finished: torch.Tensor  # (B, K) bool
    improvable: torch.Tensor  # (B, 1) bool: a running beam can still beat the worst finished one

    @classmethod
    def start(cls, b: int, k: int, n: int, pad_id: int, device: torch.device) -> BeamState:
        running = torch.full((b, k, n), pad_id, dtype=torch.long, device=device)
        running_scores = torch.zeros(b, k, device=device)
        running_scores[:, 1:] = -1e9  # identical beams at the start: only the first may expand
        return cls(running, running_scores, running.clone(), torch.full((b, k), -1e9, device=device),
                   torch.zeros(b, k, dtype=torch.bool, device=device),
                   torch.ones(b, 1, dtype=torch.bool, device=device))

    def done(self, early_stopping: bool) -> bool:
        return not bool(self.improvable.any()) or (early_stopping and bool(self.is_finished.all()))


def advance_beams(
    beams: BeamState,
    i: int,
    top_scores: torch.Tensor,
    from_beam: torch.Tensor,
    tokens: torch.Tensor,
    hits: torch.Tensor,
    top_k_mask: torch.Tensor,
    length_penalty: float,
    early_stopping: bool,
) -> torch.Tensor:
    """One step of beam bookkeeping, as transformers scores it: the top candidates (B, 2K) extend their
    beams, those that hit EOS (or the length limit) compete for the finished slots, the best K others run
    on. Updates `beams` in place and returns which candidates run on (B, K)."""
    k, n = beams.running.shape[1], beams.running.shape[2]
    cand = beams.running.gather(1, from_beam[:, :, None].expand(-1, -1, n)).clone()
    cand[:, :, i] = tokens
    if i == n - 1:
        hits = torch.ones_like(hits)
    # Running beams for the next step: the best K candidates that did not end.
    alive_scores = top_scores + hits.float() * -1e9
    next_idx = torch.topk(alive_scores, k).indices
    beams.running = cand.gather(1, next_idx[:, :, None].expand(-1, -1, n))
    beams.running_scores = alive_scores.gather(1, next_idx)
    # Finished hypotheses: only candidates ranked within the top K may enter.
    just_done = hits & top_k_mask[None]
    done_scores = top_scores / ((i + 1) ** length_penalty)
    full = beams.is_finished.all(-1, keepdim=True) & early_stopping
    done_scores = done_scores + full.float() * -1e9 + (~beams.improvable).float() * -1e9
    done_scores = done_scores + (~just_done).float() * -1e9
    merged_scores = torch.cat([beams.finished_scores, done_scores], 1)
    merged_seqs = torch.cat([beams.finished_seqs, cand], 1)
    merged_done = torch.cat([beams.is_finished, just_done], 1)
    best = torch.topk(merged_scores, k).indices
    beams.finished_scores = merged_scores.gather(1, best)
    beams.finished_seqs = merged_seqs.gather(1, best[:, :, None].expand(-1, -1, n))
    beams.is_finished = merged_done.gather(1, best)
    # Can a running beam still beat the worst finished one? (transformers' default heuristic)
    best_running = beams.running_scores[:, :1] / ((i + 1) ** length_penalty)
    worst_done = torch.where(beams.is_finished, beams.finished_scores.min(1, keepdim=True).values, -1e9)
    beams.improvable = beams.improvable & (best_running > worst_done).any(-1, keepdim=True)
    return next_idx
