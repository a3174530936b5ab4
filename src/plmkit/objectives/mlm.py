"""Masked language modelling (Devlin et al. 2019, sec. 3.1 and appendix A.1).

Choose 15% of the maskable tokens (not special, not padding) as prediction targets; of those, replace
80% by [MASK], 10% by a random token and leave 10% unchanged, so the encoder cannot rely on seeing
[MASK] at every position it must predict. The loss is cross-entropy at the chosen positions only.

Options, each a paper's choice:
- selection: per-token Bernoulli(p) (`exact_count=False`, what most libraries do) or exactly
  round(p * n) targets per sequence (`exact_count=True`, Google's `create_pretraining_data.py`);
- whole-word masking (BERT's 2019 release): a word's pieces are chosen together and get one 80/10/10
  decision, words come from WordPiece "##" continuations (`wordpiece_word_ids`) or a `word_ids` tensor;
- dynamic masking (RoBERTa sec. 4.1): a fresh mask for every batch (`mask_tokens` with the training
  generator), or static masking (original BERT): each example masked once at data-build time with a
  generator of its own (`mask_static`), so the mask depends only on (seed, example index).

Every function is pure: randomness comes only from the `torch.Generator` argument.

Shape legend: B batch, T length, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plmkit.errors import ConfigError

IGNORE = -100


@dataclass(frozen=True)
class MaskingConfig:
    """How to choose and corrupt MLM targets."""

    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]  # never chosen, never drawn as random replacements
    mlm_probability: float = 0.15
    mask_fraction: float = 0.8  # of the chosen: -> [MASK]
    random_fraction: float = 0.1  # of the chosen: -> random token; the rest stays unchanged
    exact_count: bool = False
    whole_word: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.mlm_probability < 1.0:
            raise ConfigError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if min(self.mask_fraction, self.random_fraction) < 0 or self.mask_fraction + self.random_fraction > 1:
            raise ConfigError(f"mask_fraction ({self.mask_fraction}) + random_fraction "
                              f"({self.random_fraction}) must be in [0, 1]")
        if not 0 <= self.mask_id < self.vocab_size:
            raise ConfigError(f"mask_id {self.mask_id} is outside the vocabulary (size {self.vocab_size})")
        if len(set(self.special_ids) & set(range(self.vocab_size))) >= self.vocab_size:
            raise ConfigError("every vocabulary id is special: nothing left to draw random tokens from")


def maskable(input_ids: torch.Tensor, special_ids: Iterable[int],
             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) bool: True for tokens that may be chosen (not special, not padding)."""
    special = torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype, device=input_ids.device)
    ok = ~torch.isin(input_ids, special)
    if attention_mask is not None:
        ok &= attention_mask.bool()
    return ok


def wordpiece_word_ids(input_ids: torch.Tensor, is_continuation: torch.Tensor,
                       eligible: torch.Tensor) -> torch.Tensor:
    """Word index of each token (B, T), -1 where not eligible. A word starts at every eligible token
    whose id is not a "##" continuation; `is_continuation` is a (V,) bool table over the vocabulary
    (see `continuation_table`)."""
    starts = eligible & ~is_continuation.to(input_ids.device)[input_ids]
    words = starts.long().cumsum(-1) - 1
    return torch.where(eligible & (words >= 0), words, torch.full_like(words, -1))


def continuation_table(vocab: dict[str, int] | Sequence[str], vocab_size: int) -> torch.Tensor:
    """(V,) bool: True for WordPiece continuation pieces ("##ing")."""
    table = torch.zeros(vocab_size, dtype=torch.bool)
    items = vocab.items() if isinstance(vocab, dict) else ((t, i) for i, t in enumerate(vocab))
    for token, index in items:
        if token.startswith("##") and index < vocab_size:
            table[index] = True
    return table


def _select_units(units: torch.Tensor, eligible: torch.Tensor, cfg: MaskingConfig,
                  generator: torch.Generator) -> torch.Tensor:
    """(B, T) bool targets, choosing whole units (tokens or words; `units` holds a unit index < T per
    token, -1 for ineligible tokens)."""
    b, t = units.shape
    index = units.clamp(min=0)
    uniform = torch.rand(b, t, generator=generator, device=units.device)  # one draw per unit index
    if not cfg.exact_count:
        return eligible & (uniform.gather(1, index) < cfg.mlm_probability)
    # round(p * n) tokens: units in a random order, each taken if it still fits. Single tokens always
    # fit, so the count is exact; a word that would overflow is skipped (Google's implementation).
    sizes = torch.zeros(b, t, dtype=torch.long, device=units.device).scatter_add_(1, index, eligible.long())
    target = torch.round(eligible.sum(-1).double() * cfg.mlm_probability).long()  # (B,)
    order = uniform.masked_fill(sizes == 0, 2.0).argsort(dim=1)
    sorted_sizes = sizes.gather(1, order)
    if cfg.whole_word:
        taken = torch.zeros(b, t, dtype=torch.bool)
        for row, (row_sizes, budget) in enumerate(zip(sorted_sizes.tolist(), target.tolist())):
            for k, size in enumerate(row_sizes):
                if size == 0 or budget == 0:
                    break
                if size <= budget:
                    taken[row, k] = True
                    budget -= size
        taken = taken.to(units.device)
    else:
        taken = (sorted_sizes.cumsum(1) <= target[:, None]) & (sorted_sizes > 0)
    chosen_units = torch.zeros(b, t, dtype=torch.bool, device=units.device).scatter_(1, order, taken)
    return eligible & chosen_units.gather(1, index)


def mask_tokens(
    input_ids: torch.Tensor,
    cfg: MaskingConfig,
    generator: torch.Generator,
    attention_mask: torch.Tensor | None = None,
    word_ids: torch.Tensor | None = None,
    is_continuation: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a batch for MLM. input_ids (B, T) -> (masked_ids (B, T), labels (B, T)).

    labels hold the original id at chosen positions and -100 elsewhere. For whole-word masking give
    `word_ids` (B, T; -1 for tokens outside any word) or `is_continuation` (V,) to derive words from
    WordPiece "##" pieces. The generator is consumed the same way whatever the options, three draws
    of (B, T): selection, the 80/10/10 decision, the random replacement.
    """
    squeeze = input_ids.dim() == 1
    if squeeze:
        input_ids = input_ids[None]
        attention_mask = None if attention_mask is None else attention_mask[None]
        word_ids = None if word_ids is None else word_ids[None]
    b, t = input_ids.shape
    device = input_ids.device
    eligible = maskable(input_ids, cfg.special_ids, attention_mask)
    if cfg.whole_word:
        if word_ids is not None:
            units = torch.where(eligible & (word_ids >= 0), word_ids, torch.full_like(word_ids, -1))
            if units.numel() and int(units.max()) >= t:
                raise ConfigError(f"word_ids must be < sequence length {t}, got {int(units.max())}")
        elif is_continuation is not None:
            units = wordpiece_word_ids(input_ids, is_continuation, eligible)
        else:
            raise ConfigError("whole-word masking needs word_ids or a WordPiece continuation table")
        eligible = eligible & (units >= 0)
    else:
        units = torch.where(eligible, torch.arange(t, device=device).expand(b, t), -1)
    chosen = _select_units(units, eligible, cfg, generator)
    # One 80/10/10 decision per unit, so a word's pieces share it.
    decision = torch.rand(b, t, generator=generator, device=device).gather(1, units.clamp(min=0))
    candidates = torch.tensor(sorted(set(range(cfg.vocab_size)) - set(cfg.special_ids)), device=device)
    random_ids = candidates[torch.randint(len(candidates), (b, t), generator=generator, device=device)]
    to_mask = chosen & (decision < cfg.mask_fraction)
    keep_from = cfg.mask_fraction + cfg.random_fraction
    to_random = chosen & (decision >= cfg.mask_fraction) & (decision < keep_from)
    masked = input_ids.masked_fill(to_mask, cfg.mask_id)
    masked = torch.where(to_random, random_ids.to(input_ids.dtype), masked)
    labels = input_ids.masked_fill(~chosen, IGNORE)
    if squeeze:
        return masked[0], labels[0]
    return masked, labels


def example_generator(seed: int, index: int) -> torch.Generator:
    """The generator of example `index` for static masking: depends on (seed, index) only, never on
    batching or on how many examples came before."""
    # A large odd multiplier keeps (seed, index) pairs apart without hashing.
    return torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63 - 1))


def mask_static(
    examples: Sequence[torch.Tensor],
    cfg: MaskingConfig,
    seed: int,
    word_ids: Sequence[torch.Tensor] | None = None,
    is_continuation: torch.Tensor | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Static masking (original BERT): mask each 1-D example once, at data-build time, with its own
    generator. Returns [(masked_ids, labels)] in example order."""
    out = []
    for i, ids in enumerate(examples):
        words = None if word_ids is None else word_ids[i]
        out.append(mask_tokens(ids, cfg, example_generator(seed, i), word_ids=words,
                               is_continuation=is_continuation))
    return out


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the chosen positions and their count.

    loss_sum = -sum_{t: labels[t] != -100} log softmax(logits[t])[labels[t]]
    logits (B, T, V); labels (B, T) with -100 where there is no target. Returns (loss_sum (), num_targets ()).
    """
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                               ignore_index=IGNORE, reduction="sum")
    return loss_sum, (labels != IGNORE).sum()
