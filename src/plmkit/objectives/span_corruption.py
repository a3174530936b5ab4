"""T5 span corruption (Raffel et al. 2020, sec. 3.1.4 and 3.3.4).

Drop 15% of the tokens in spans of mean length 3; in the input, each dropped span becomes one sentinel
token; the target lists each sentinel followed by the tokens it hides:

    tokens   Thank you for inviting me to your party last week .
    inputs   Thank you <X> me to your party <Y> week . </s>
    targets  <X> for inviting <Y> last </s>

Sentinels are T5's `<extra_id_i>`, counting down from the top of the vocabulary: `<extra_id_0>` is id
V - 1, `<extra_id_1>` is V - 2, ... (`sentinel_start` = V - 1 by default).

The number of noise tokens and spans depends only on the length, so a window of `tokens_length` tokens
always gives inputs and targets of the same lengths: `span_corruption_lengths(inputs_length)` returns the
window length that fills the encoder context exactly (T5's `random_spans_helper`: 568 tokens for 512
inputs and 114 targets). Randomness comes only from the `torch.Generator` argument.

Shape legend: B batch, L window length, S input length, T target length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from plmkit.errors import ConfigError


def _counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) for a window of `length` tokens, as T5 rounds them."""
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(round(num_noise / mean_span_length), 1)
    return num_noise, num_spans


def corrupted_lengths(
    length: int, noise_density: float = 0.15, mean_span_length: float = 3.0
) -> tuple[int, int]:
    """(input length, target length) for a window of `length` tokens: one sentinel per span, one EOS."""
    num_noise, num_spans = _counts(length, noise_density, mean_span_length)
    return length - num_noise + num_spans + 1, num_noise + num_spans + 1


def span_corruption_lengths(
    inputs_length: int, noise_density: float = 0.15, mean_span_length: float = 3.0
) -> tuple[int, int]:
    """(window length, target length): the longest window whose corrupted input fits `inputs_length`.

    T5's `random_spans_helper`: for inputs_length=512 this is (568, 114).
    """
    if inputs_length < 3:
        raise ConfigError(f"span corruption needs inputs_length >= 3, got {inputs_length}")
    tokens_length = inputs_length - 1
    while corrupted_lengths(tokens_length + 1, noise_density, mean_span_length)[0] <= inputs_length:
        tokens_length += 1
    return tokens_length, corrupted_lengths(tokens_length, noise_density, mean_span_length)[1]


def _random_segmentation(num_items: int, num_segments: int, generator: torch.Generator) -> torch.Tensor:
    """Split `num_items` into `num_segments` positive lengths, uniformly at random."""
    first = torch.zeros(num_items, dtype=torch.bool)
    cuts = torch.randperm(num_items - 1, generator=generator)[: num_segments - 1] + 1
    first[cuts] = True
    segment_id = first.long().cumsum(0)
    return torch.bincount(segment_id, minlength=num_segments)


def random_spans_noise_mask(
    length: int, generator: torch.Generator, noise_density: float = 0.15, mean_span_length: float = 3.0
) -> torch.Tensor:
    """(L,) bool, True at noise tokens: spans alternate non-noise, noise, ... starting with non-noise."""
    if length < 2:
        raise ConfigError(f"span corruption needs windows of at least 2 tokens, got {length}")
    num_noise, num_spans = _counts(length, noise_density, mean_span_length)
    noise_lengths = _random_segmentation(num_noise, num_spans, generator)
    keep_lengths = _random_segmentation(length - num_noise, num_spans, generator)
    interleaved = torch.stack([keep_lengths, noise_lengths], 1).flatten()  # (2 * spans,)
    is_noise = torch.tensor([False, True]).repeat(num_spans)
    return torch.repeat_interleave(is_noise, interleaved)


def _sentinelize(tokens: torch.Tensor, drop: torch.Tensor, sentinel_start: int) -> torch.Tensor:
    """Replace each run of `drop` positions by one sentinel (counting down), i.e. keep ~drop tokens."""
    starts = drop & ~F.pad(drop[:-1], (1, 0), value=False)
    sentinel = sentinel_start + 1 - starts.long().cumsum(0)  # first span gets sentinel_start
    out = torch.where(starts, sentinel, tokens)
    return out[~drop | starts]


def corrupt_spans(
    tokens: torch.Tensor, noise_mask: torch.Tensor, sentinel_start: int, eos_id: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (L,), noise_mask (L,) -> (inputs (S,), targets (T,)): noise spans -> sentinels in the
    inputs; targets are each sentinel followed by its span. EOS ends both when `eos_id` is set."""
    inputs = _sentinelize(tokens, noise_mask, sentinel_start)
    targets = _sentinelize(tokens, ~noise_mask, sentinel_start)
    if eos_id is not None:
        eos = tokens.new_tensor([eos_id])
        inputs, targets = torch.cat([inputs, eos]), torch.cat([targets, eos])
    return inputs, targets


def span_corruption_batch(
    windows: torch.Tensor,
    generator: torch.Generator,
    sentinel_start: int,
    eos_id: int | None,
    noise_density: float = 0.15,
    mean_span_length: float = 3.0,
) -> dict[str, torch.Tensor]:
    """Packed windows (B, L) -> {"input_ids" (B, S), "labels" (B, T)}, every row the same lengths."""
    inputs, targets = [], []
    for row in windows.cpu():
        mask = random_spans_noise_mask(row.shape[0], generator, noise_density, mean_span_length)
        x, y = corrupt_spans(row, mask, sentinel_start, eos_id)
        inputs.append(x)
        targets.append(y)
    device = windows.device
    return {"input_ids": torch.stack(inputs).to(device), "labels": torch.stack(targets).to(device)}


def reconstruct(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    sentinel_start: int,
    eos_id: int | None,
    num_sentinels: int = 100,
) -> list[int]:
    """Interleave inputs and targets back into the original tokens (EOS dropped): each sentinel in the
    inputs is replaced by the tokens that follow the same sentinel in the targets."""
    if eos_id is not None:
        inputs, targets = inputs[inputs != eos_id], targets[targets != eos_id]
    lowest = sentinel_start - num_sentinels + 1
    is_sentinel = lambda t: lowest <= t <= sentinel_start  # noqa: E731
    spans: dict[int, list[int]] = {}
    current = None
    for t in targets.tolist():
        if is_sentinel(t):
            current = t
            spans[t] = []
        elif current is not None:
            spans[current].append(t)
    out: list[int] = []
    for t in inputs.tolist():
        out.extend(spans.get(t, []) if is_sentinel(t) else [t])
    return out
