"""BART denoising (Lewis et al. 2020, sec. 2.2): corrupt a document, train the decoder to restore it.

The transformations BART's best model combines, each a function here:
- text infilling (`infill_spans`): spans with lengths drawn from Poisson(lambda=3) are each replaced by a
  single mask token until 30% of the tokens are masked; a span of length 0 inserts a mask token, so the
  model must also learn how many tokens a mask hides;
- sentence permutation (`permute_sentences`): the document's sentences (split after a full-stop token)
  are shuffled;
- token deletion (`delete_tokens`, optional): random tokens are removed, so the model must find where.

`denoise` applies them in fairseq's order (permute, then infill, then delete); the target is the
original document. Randomness comes only from the `torch.Generator` argument.

Shape legend: L document length, B batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from plmkit.errors import ConfigError


@dataclass
class Infilled:
    """A corrupted sequence and the length of each masked span, in order (0 = an inserted mask)."""

    tokens: torch.Tensor  # (L',)
    span_lengths: list[int]


def poisson_span_lengths(num_to_mask: int, poisson_lambda: float, generator: torch.Generator) -> list[int]:
    """Draw Poisson(lambda) span lengths until they cover `num_to_mask` tokens; the last is cut to fit."""
    lengths: list[int] = []
    total = 0
    rate = torch.tensor([poisson_lambda] * 64, dtype=torch.float)
    while total < num_to_mask:
        for n in torch.poisson(rate, generator=generator).long().tolist():
            lengths.append(min(n, num_to_mask - total))
            total += lengths[-1]
            if total >= num_to_mask:
                break
    return lengths


def infill_spans(
    tokens: torch.Tensor,
    mask_id: int,
    generator: torch.Generator,
    mask_ratio: float = 0.3,
    poisson_lambda: float = 3.0,
) -> Infilled:
    """Replace spans covering round(mask_ratio * L) tokens by one `mask_id` each (sec. 2.2, text infilling).

    Spans sit in distinct gaps between unmasked tokens, so they never merge and the realized span
    lengths are the drawn ones.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ConfigError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    n = tokens.shape[0]
    num_to_mask = round(n * mask_ratio)
    if num_to_mask == 0:
        return Infilled(tokens.clone(), [])
    lengths = poisson_span_lengths(num_to_mask, poisson_lambda, generator)
    kept = n - num_to_mask
    if len(lengths) > kept + 1:  # more spans than gaps: merge the surplus into the last gap's span
        lengths = lengths[:kept] + [sum(lengths[kept:])]
    gaps = torch.randperm(kept + 1, generator=generator)[: len(lengths)].sort().values.tolist()
    out: list[int] = []
    src = tokens.tolist()
    pos = 0  # next source token
    unmasked_seen = 0
    for gap, length in zip(gaps, lengths):
        take = gap - unmasked_seen  # unmasked tokens before this gap
        out.extend(src[pos : pos + take])
        pos += take
        unmasked_seen = gap
        out.append(mask_id)
        pos += length
    out.extend(src[pos:])
    return Infilled(torch.tensor(out, dtype=tokens.dtype), lengths)


def permute_sentences(
    tokens: torch.Tensor, sentence_end_ids: Sequence[int], generator: torch.Generator
) -> torch.Tensor:
    """Shuffle sentences, each ending after a token in `sentence_end_ids` (the rest is one sentence)."""
    ends = torch.isin(tokens, torch.tensor(list(sentence_end_ids), dtype=tokens.dtype))
    bounds = (ends.nonzero().flatten() + 1).tolist()
    if not bounds or bounds[-1] != tokens.shape[0]:
        bounds.append(tokens.shape[0])
    starts = [0] + bounds[:-1]
    sentences = [tokens[s:e] for s, e in zip(starts, bounds)]
    order = torch.randperm(len(sentences), generator=generator).tolist()
    return torch.cat([sentences[i] for i in order])


def delete_tokens(tokens: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Remove round(ratio * L) random tokens."""
    n = tokens.shape[0]
    drop = torch.randperm(n, generator=generator)[: round(n * ratio)]
    keep = torch.ones(n, dtype=torch.bool)
    keep[drop] = False
    return tokens[keep]


@dataclass
class DenoisingConfig:
    mask_id: int
    mask_ratio: float = 0.3
    poisson_lambda: float = 3.0
    permute_sentences: bool = True
    sentence_end_ids: tuple[int, ...] = ()
    delete_ratio: float = 0.0


def denoise(tokens: torch.Tensor, cfg: DenoisingConfig, generator: torch.Generator) -> torch.Tensor:
    """The corrupted input for one document (L,); the training target is `tokens` itself."""
    x = tokens
    if cfg.permute_sentences and cfg.sentence_end_ids:
        x = permute_sentences(x, cfg.sentence_end_ids, generator)
    x = infill_spans(x, cfg.mask_id, generator, cfg.mask_ratio, cfg.poisson_lambda).tokens
    if cfg.delete_ratio > 0:
        x = delete_tokens(x, cfg.delete_ratio, generator)
    return x


def denoising_batch(
    windows: torch.Tensor, cfg: DenoisingConfig, generator: torch.Generator, pad_id: int
) -> dict[str, torch.Tensor]:
    """Windows (B, L) -> right-padded corrupted `input_ids`, `attention_mask` and `labels` = windows."""
    rows = [denoise(w, cfg, generator) for w in windows.cpu()]
    s = max(r.shape[0] for r in rows)
    ids = torch.full((len(rows), s), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), s, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = 1
    device = windows.device
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": windows.clone()}
