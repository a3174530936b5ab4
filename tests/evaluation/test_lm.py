"""The log-likelihood engine against a plain full forward pass: shared contexts, a shared prefix,
ragged batches and truncation give the same numbers as scoring each request alone."""

from __future__ import annotations

import random

import pytest
import torch

import plmkit
from plmkit.evaluation import lm


@pytest.fixture(scope="module")
def model(gpt2_checkpoint):
    torch.set_num_threads(1)
    return plmkit.load(gpt2_checkpoint).model.eval()


def alone(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """Score one request with one forward over (ctx + cont)[-(window + 1):][:-1], as lm-eval does."""
    window = model.config.max_positions
    ids = (ctx + cont)[-(window + 1):][:-1]
    with torch.no_grad():
        logp = model(torch.tensor([ids])).float().log_softmax(-1)[0, -len(cont):]
    target = torch.tensor(cont)
    return float(logp.gather(1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())


def requests(seed: int, prefix_len: int) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    prefix = [rng.randrange(5, 290) for _ in range(prefix_len)]
    out = []
    for _ in range(7):
        ctx = prefix + [rng.randrange(5, 290) for _ in range(rng.randint(1, 40))]
        # Several continuations per context, of different lengths; one long, one a single token.
        for n in rng.sample([1, 2, 3, 9], rng.randint(1, 3)):
            out.append((ctx, [rng.randrange(5, 290) for _ in range(n)]))
    out.append((prefix + [7] * 120, [8, 9, 10]))  # longer than the window: left-truncated
    return out


@pytest.mark.parametrize("prefix_len", [0, 40])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batched_scores_equal_each_request_alone(model, prefix_len, batch_size):
    reqs = requests(prefix_len + batch_size, prefix_len)
    got = lm.loglikelihoods(model, reqs, batch_size=batch_size)
    for (ctx, cont), scored in zip(reqs, got):
        logprob, greedy = alone(model, ctx, cont)
        assert scored.logprob == pytest.approx(logprob, abs=1e-4)
        assert scored.is_greedy == greedy


def test_shared_prefix_is_used_when_long_enough(model):
    contexts = [tuple(ctx) for ctx, _ in requests(0, 40)]
    order = [(c, [(0, [1])]) for c in dict.fromkeys(contexts)]
    unique = list(dict.fromkeys(contexts))
    shared = lm._shared_prefix(model, unique, order, torch.device("cpu"), torch.float32)
    assert shared is not None and shared.length >= 40
    short = [tuple(ctx) for ctx, _ in requests(0, 0)]
    assert lm._shared_prefix(model, short, [(c, [(0, [1])]) for c in short], torch.device("cpu"),
                             torch.float32) is None


def test_rolling_windows_cover_every_token_once():
    tokens = list(range(100, 350))
    windows = lm.rolling_windows(tokens, prefix=0, max_length=64)
    assert [t for _, cont in windows for t in cont] == tokens
    assert windows[0][0][0] == 0
    for ctx, cont in windows:
        assert len(ctx) + len(cont) - 1 <= 64 + 1 and ctx


def test_one_batch_of_long_contexts_and_long_continuations(model):
    # The longest context and the longest continuation belong to different examples of one batch.
    prefix = list(range(20, 60))
    reqs = [(prefix + list(range(100, 160)), [5]), (prefix + [70], list(range(200, 212))),
            (prefix + [71], [6])]
    got = lm.loglikelihoods(model, reqs, batch_size=8)
    for (ctx, cont), scored in zip(reqs, got):
        assert scored.logprob == pytest.approx(alone(model, ctx, cont)[0], abs=1e-4)
