"""Measuring a tuned policy the way RLHF papers plot it: one sample per prompt, and its KL to a reference.

    batch, kl = sample_with_kl(policy, sft, prompts, tokenizer=tok, max_new_tokens=16)
    scores = my_judge(batch.prompts, batch.responses); kl.mean()   # nats per response

The KL is the Monte Carlo estimate over the policy's own samples, Σ_t log π(y_t) - log π_ref(y_t) summed
over the response tokens (k1, unbiased for KL(π || π_ref) per response), so a score measured on the same
samples and the KL describe the same distribution (InstructGPT's and Gao et al. 2023's x axis).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from plmkit.alignment.ppo import Rollout, response_logprobs, rollout
from plmkit.alignment.records import require_eos
from plmkit.errors import ConfigError


@torch.no_grad()
def sample_with_kl(
    policy: nn.Module,
    reference: nn.Module,
    prompts: Sequence[str],
    *,
    tokenizer: Any,
    max_new_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    format_prompt: Callable[[str], list[int]] | None = None,
) -> tuple[Rollout, Tensor]:
    """One response per prompt sampled from `policy` (full softmax at `temperature`), and the KL estimate
    (B,) of each response to `reference`, in nats. `format_prompt` as in `train_ppo` (default: the
    tokenizer's encoding with its special tokens)."""
    if not prompts:
        raise ConfigError("sample_with_kl got no prompts")
    eos_id = require_eos(tokenizer)
    pad_id = tokenizer.pad_id if getattr(tokenizer, "pad_id", None) is not None else eos_id
    encode = format_prompt or (lambda text: tokenizer.encode(text, add_special_tokens=True))
    batch = rollout(
        policy, list(prompts), [list(encode(p)) for p in prompts], max_new_tokens=max_new_tokens,
        eos_id=eos_id, pad_id=pad_id, temperature=temperature, generator=generator, tokenizer=tokenizer,
    )
    mask = batch.response_mask.float()
    log_ratio = response_logprobs(policy, batch, temperature)
    log_ratio = log_ratio - response_logprobs(reference, batch, temperature)
    return batch, (log_ratio * mask).sum(-1)
