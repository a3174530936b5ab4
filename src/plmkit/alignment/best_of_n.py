"""Best-of-n sampling: draw n responses per prompt and keep the one the reward scores highest.

The baseline every RLHF result is compared with (Stiennon et al. 2020; Gao et al. 2023 measure its KL to
the sampling policy as log n - (n - 1)/n): no training at all, n times the sampling cost. The reward is a
reward model scored on the policy's own tokens or any `reward_fn(prompts, responses) -> scores`, exactly
as in PPO (`plmkit.alignment.ppo.score_rollout`).

    best = best_of_n(policy, reward_fn, ["\\n\\nHuman: hi\\n\\nAssistant:"], n=8, tokenizer=tok)
    best.responses[0], best.scores[0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from plmkit.alignment.ppo import RewardFn, rollout, score_rollout
from plmkit.errors import ConfigError


@dataclass
class BestOfN:
    responses: list[str]  # the best response of each prompt
    scores: Tensor  # (B,) its score
    all_responses: list[list[str]]  # the n samples of each prompt
    all_scores: Tensor  # (B, n)


def best_of_n_kl(n: int) -> float:
    """The KL from the sampling policy to its best-of-n distribution, log n - (n - 1)/n nats (an upper
    bound; exact when the reward has no ties), for plotting best-of-n on the same KL axis as PPO."""
    return math.log(n) - (n - 1) / n


def best_of_n(
    policy: nn.Module,
    reward: nn.Module | RewardFn,
    prompts: Sequence[str],
    n: int,
    *,
    tokenizer: Any,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    format_prompt: Callable[[str], list[int]] | None = None,
    batch_size: int = 64,
) -> BestOfN:
    """Sample `n` responses for every prompt from `policy` and return the best by `reward` (ties: the first).

    Samples go through `plmkit.generate` with the KV cache, `batch_size` sequences at a time; a prompt is
    formatted into tokens by `format_prompt` (default: the tokenizer's encoding with its special tokens).
    """
    if n < 1:
        raise ConfigError(f"best_of_n needs n >= 1, got {n}")
    if not prompts:
        raise ConfigError("best_of_n got no prompts")
    eos_id = getattr(tokenizer, "eos_id", None)
    if eos_id is None:
        raise ConfigError("best_of_n needs a tokenizer with an EOS token (responses end there)")
    pad_id = tokenizer.pad_id if getattr(tokenizer, "pad_id", None) is not None else eos_id
    encode = format_prompt or (lambda text: tokenizer.encode(text, add_special_tokens=True))
    ids = [list(encode(p)) for p in prompts]
    for i, row in enumerate(ids):
        if not row:
            raise ConfigError(f"prompt {i} encodes to no tokens")
    flat_prompts = [p for p in prompts for _ in range(n)]
    flat_ids = [row for row in ids for _ in range(n)]
    texts: list[str] = []
    scores: list[Tensor] = []
    for start in range(0, len(flat_prompts), batch_size):
        batch = rollout(
            policy, flat_prompts[start : start + batch_size], flat_ids[start : start + batch_size],
            max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id, temperature=temperature,
            generator=generator, tokenizer=tokenizer,
        )
        with torch.no_grad():
            where = f"best_of_n samples {start}-{start + len(batch.prompts) - 1}"
            scores.append(score_rollout(reward, batch, where))
        texts.extend(batch.responses)
    all_scores = torch.cat(scores).view(len(prompts), n)
    best = all_scores.argmax(-1)  # first maximum on ties
    grouped = [texts[i * n : (i + 1) * n] for i in range(len(prompts))]
    return BestOfN(
        responses=[grouped[i][int(j)] for i, j in enumerate(best)],
        scores=all_scores.gather(1, best[:, None]).squeeze(1),
        all_responses=grouped,
        all_scores=all_scores,
    )
