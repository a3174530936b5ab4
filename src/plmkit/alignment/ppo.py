"""PPO for language models (RLHF's third stage), as InstructGPT (Ouyang et al. 2022) and "The N
implementation details of RLHF with PPO" (Huang et al. 2024) describe it.

The outer loop of `train_ppo` is four visible steps per rollout batch:

    rollout   sample a response per prompt with `plmkit.generate` (KV cache, temperature sampling)
    score     a reward model or any `reward_fn(prompts, responses) -> scores`, minus a penalty for no EOS
    evaluate  old log-probs and values of the actor, reference log-probs (LoRA: adapters disabled)
    update    per-token rewards -β·KL + score at the last token, GAE, whitened advantages, then several
              epochs of minibatch steps on the clipped policy loss + vf_coef · clipped value loss

The math is pure functions of tensors (`kl_k1`, `kl_k3`, `token_rewards`, `gae`, `whiten`, `policy_loss`,
`value_loss`, `entropy`, the β controllers) with golden tests; GRPO imports its KL estimators from here.

Layout of a rollout: prompts are left-padded (B, P), responses right-padded (B, N); `response_mask` (B, N)
is 1 on the response tokens up to and including the first EOS. The log-prob and value of response token i
are read from the hidden state at full position P + i - 1 (the state before the action).

Shape legend: B batch, P prompt length, N response length, D model width, V vocabulary.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from plmkit.alignment.logprobs import gather_logprobs
from plmkit.errors import ConfigError, TrainingError
from plmkit.models.generation import generate, left_pad
from plmkit.models.heads import LMHead, ScalarHead, TaskModel
from plmkit.peft import adapter_names, disable_adapters

RewardFn = Callable[[list[str], list[str]], "Sequence[float] | Tensor"]

# ------------------------------------------------------------------------------------------ pure math


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` where `mask` is 1 (a scalar); 0 when the mask is empty."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token KL estimate k1 = log π(a) - log π_ref(a) (Schulman 2020, "Approximating KL divergence").

    Unbiased for KL(π || π_ref) under samples from π, but each term can be negative. Any shape -> same shape.
    """
    return logprobs - ref_logprobs


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token KL estimate k3 = (r - 1) - log r with r = π_ref(a) / π(a) (Schulman 2020).

    Unbiased and never negative, with lower variance than k1 when π is close to π_ref.
    """
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": kl_k1, "k3": kl_k3}


class FixedKL:
    """A constant KL coefficient β."""

    def __init__(self, value: float) -> None:
        self.value = value

    def update(self, current_kl: float, n_samples: int) -> None:
        pass

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKL(FixedKL):
    """β steered towards a target KL (Ziegler et al. 2019, sec. 2.2):

        e = clip(KL / target - 1, -0.2, 0.2);   β ← β · (1 + e · n / horizon)

    where n is the number of samples the KL was measured on. Too much KL raises β, too little lowers it.
    """

    def __init__(self, value: float, target: float, horizon: float) -> None:
        super().__init__(value)
        if target <= 0 or horizon <= 0:
            raise ConfigError(f"adaptive KL needs target > 0 and horizon > 0, got {target} and {horizon}")
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_samples: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_samples / self.horizon


def penalize_missing_eos(scores: Tensor, has_eos: Tensor, penalty: float) -> Tensor:
    """Scores (B,) minus `penalty` for responses (B,) bool that never emitted EOS (Huang et al. detail 4:
    a truncated response must not be rewarded like a finished one). trl's `missing_eos_penalty`."""
    return scores - penalty * (~has_eos.bool()).to(scores.dtype)


def token_rewards(scores: Tensor, kl: Tensor, beta: float, response_mask: Tensor) -> Tensor:
    """InstructGPT's per-token reward: -β·KL at every response token, plus the sequence score at the last one.

        r_t = -β · kl_t            (t < last)
        r_last = -β · kl_last + score

    scores (B,), kl (B, N), response_mask (B, N) -> rewards (B, N), 0 outside the response.
    """
    mask = response_mask.to(kl.dtype)
    rewards = -beta * kl * mask
    last = last_index(response_mask)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards


def last_index(response_mask: Tensor) -> Tensor:
    """Index of the last 1 of each row of a (B, N) mask (B,); 0 for an empty row."""
    positions = torch.arange(1, response_mask.shape[1] + 1, device=response_mask.device)
    return ((response_mask.long() * positions).argmax(-1)).long()


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16), backwards over the response:

        δ_t = r_t + γ·V_{t+1} - V_t          (V after the last response token is 0: the episode ended)
        A_t = δ_t + γ·λ·A_{t+1},   returns_t = A_t + V_t

    rewards, values, mask (B, N) -> advantages, returns (B, N); 0 outside the mask.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    n = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(values[:, 0])
    for t in reversed(range(n)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(values - mean) / sqrt(var + eps) over the masked entries; `shift_mean=False` adds the mean back
    (for rewards: rescale without moving the zero). The variance is unbiased (Bessel), as in trl and
    OpenAI's lm-human-preferences. Entries outside the mask come out as whatever the formula gives;
    callers mask them."""
    m = mask.to(values.dtype)
    count = m.sum()
    if count < 2:
        raise ConfigError(f"whiten needs at least 2 masked entries, got {int(count)}")
    mean = (values * m).sum() / count
    var = (((values - mean) ** 2) * m).sum() / (count - 1)
    out = (values - mean) * torch.rsqrt(var + eps)
    return out if shift_mean else out + mean


@dataclass
class PolicyLoss:
    loss: Tensor  # (B, N) per-token clipped surrogate loss
    clip_fraction: Tensor  # scalar: share of masked tokens where the clipped term was taken
    approx_kl: Tensor  # scalar: ½·mean((log π - log π_old)²), Schulman's k2 between old and new policy


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_ratio: float
) -> PolicyLoss:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimize per token:

        ρ = exp(log π - log π_old);   loss = max(-A·ρ, -A·clip(ρ, 1-ε, 1+ε))

    all (B, N). Metrics are averaged over the mask.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio)
    loss = torch.maximum(unclipped, clipped)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
        approx_kl = 0.5 * masked_mean(log_ratio.float() ** 2, mask)
    return PolicyLoss(loss, clip_fraction, approx_kl)


@dataclass
class ValueLoss:
    loss: Tensor  # (B, N) per-token ½·max((V - R)², (V_clipped - R)²)
    clip_fraction: Tensor  # scalar: share of masked tokens where the clipped error was larger


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float
) -> ValueLoss:
    """The value loss with PPO2's clipping (Huang et al. detail 9): the new value may move at most
    `clip_range` from the old one before the squared error stops rewarding it.

        V_c = old + clip(V - old, -ε, ε);   loss = ½·max((V - R)², (V_c - R)²)
    """
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return ValueLoss(0.5 * torch.maximum(unclipped, clipped), clip_fraction)


def entropy(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last axis: (…, V) -> (…), computed in fp32."""
    logits = logits.float()
    return torch.logsumexp(logits, -1) - (logits.softmax(-1) * logits).sum(-1)


# ---------------------------------------------------------------------------------- rollout and scoring


@dataclass
class Rollout:
    """One batch of sampled responses, with everything the update needs once `evaluate` has run."""

    prompts: list[str]
    prompt_ids: Tensor  # (B, P) left-padded
    prompt_mask: Tensor  # (B, P)
    response_ids: Tensor  # (B, N) right-padded
    response_mask: Tensor  # (B, N) 1 up to and including the first EOS
    has_eos: Tensor  # (B,) bool
    responses: list[str] = field(default_factory=list)
    scores: Tensor | None = None  # (B,) from the reward, before the missing-EOS penalty
    logprobs: Tensor | None = None  # (B, N) of the actor that sampled
    ref_logprobs: Tensor | None = None  # (B, N)
    values: Tensor | None = None  # (B, N)

    @property
    def input_ids(self) -> Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], 1)  # (B, P + N)

    @property
    def attention_mask(self) -> Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], 1)  # (B, P + N)

    def rows(self, index: Tensor) -> Rollout:
        """The rollout restricted to rows `index` (a minibatch)."""
        kept = index.tolist()
        picked = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in picked.items():
            if isinstance(value, Tensor):
                picked[name] = value[index]
        picked["prompts"] = [self.prompts[i] for i in kept]
        picked["responses"] = [self.responses[i] for i in kept] if self.responses else []
        return Rollout(**picked)


def response_mask_from(response_ids: Tensor, eos_id: int) -> tuple[Tensor, Tensor]:
    """(B, N) sampled tokens -> mask (B, N) of the tokens up to and including the first EOS, has_eos (B,)."""
    is_eos = response_ids == eos_id
    before_or_at = (is_eos.long().cumsum(-1) - is_eos.long()) == 0
    return before_or_at.long(), is_eos.any(-1)


def rollout(
    policy: nn.Module,
    prompts: Sequence[str],
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    tokenizer: Any = None,
) -> Rollout:
    """Sample one response per prompt from the full softmax(logits / temperature) (no top-k/top-p, so the
    log-probs the update computes are those of the distribution that sampled), over the KV cache."""
    if len(prompts) != len(prompt_ids):
        raise ConfigError(f"{len(prompts)} prompts but {len(prompt_ids)} prompt token lists")
    if any(len(p) == 0 for p in prompt_ids):
        raise ConfigError("a prompt encodes to no tokens; every prompt needs at least one")
    device = next(policy.parameters()).device
    ids, mask = left_pad(prompt_ids, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    response_ids = generate(
        policy, ids, mask, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
        eos_token_id=eos_id, pad_token_id=pad_id, generator=generator,
    ).clone()  # out of inference mode: the update backpropagates through embeddings of these ids
    response_mask, has_eos = response_mask_from(response_ids, eos_id)
    out = Rollout(list(prompts), ids, mask, response_ids, response_mask, has_eos)
    if tokenizer is not None:
        out.responses = decode_responses(tokenizer, response_ids, response_mask, eos_id)
    return out


def decode_responses(tokenizer: Any, response_ids: Tensor, response_mask: Tensor, eos_id: int) -> list[str]:
    """The response texts, without the EOS token and padding."""
    texts = []
    for ids, mask in zip(response_ids.tolist(), response_mask.tolist()):
        texts.append(tokenizer.decode([t for t, m in zip(ids, mask) if m and t != eos_id]))
    return texts


def check_scores(scores: Any, batch: int, where: str) -> Tensor:
    """A reward's output as a float tensor (B,), or a one-line error naming what is wrong and where."""
    try:
        scores = torch.as_tensor(scores, dtype=torch.float32).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        kind = type(scores).__name__
        raise ConfigError(f"{where}: the reward returned {kind}, not numbers ({exc})") from None
    if scores.dim() != 1 or scores.shape[0] != batch:
        raise ConfigError(
            f"{where}: the reward returned {tuple(scores.shape) if scores.dim() else 'a scalar'} scores for "
            f"{batch} responses (it must return one score per response)"
        )
    bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    if bad:
        raise TrainingError(
            f"{where}: the reward is {scores[bad[0]].item()} for response {bad[0]} (of {batch}); stopping"
        )
    return scores


def score_rollout(
    reward: nn.Module | RewardFn, batch: Rollout, where: str, reward_scores_fn: Callable | None = None
) -> Tensor:
    """Scores (B,) of a rollout: a reward model reads the policy's own tokens (prompt + response + EOS);
    a callable reads the prompt and response texts."""
    b = batch.response_ids.shape[0]
    if isinstance(reward, nn.Module):
        from plmkit.alignment.reward import reward_scores

        scores = (reward_scores_fn or reward_scores)(reward, batch.input_ids, batch.attention_mask)
    else:
        if not batch.responses and b:
            raise ConfigError(f"{where}: a reward function needs response texts: pass the tokenizer")
        scores = reward(list(batch.prompts), list(batch.responses))
    return check_scores(scores, b, where)


def reward_model_fn(
    model: nn.Module,
    tokenizer: Any,
    format_prompt: Callable[[str], str] = lambda p: p,
    *,
    batch_size: int = 32,
) -> RewardFn:
    """A reward model with its own tokenizer as a text `reward_fn`: the text round trip for a reward model
    whose vocabulary differs from the policy's. Each pair is scored as the rows `plmkit.alignment.records`
    trains reward models on: the tokens of format_prompt(prompt) (with the tokenizer's special tokens),
    of the response, and EOS."""
    from plmkit.alignment.reward import reward_scores

    eos = tokenizer.eos_id

    @torch.no_grad()
    def score(prompts: list[str], responses: list[str]) -> Tensor:
        device = next(model.parameters()).device
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else (eos or 0)
        out = []
        for i in range(0, len(prompts), batch_size):
            rows = [
                tokenizer.encode(format_prompt(p), add_special_tokens=True)
                + tokenizer.encode(r, add_special_tokens=False) + ([eos] if eos is not None else [])
                for p, r in zip(prompts[i : i + batch_size], responses[i : i + batch_size])
            ]
            ids, mask = left_pad(rows, pad)
            out.append(reward_scores(model, ids.to(device), mask.to(device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    return score


# ------------------------------------------------------------------------------------------ actor-critic


def _lm_parts(policy: nn.Module) -> tuple[nn.Module, nn.Module]:
    if not (isinstance(policy, TaskModel) and isinstance(policy.head, LMHead)):
        raise ConfigError(
            "PPO needs a plmkit decoder TaskModel(backbone, LMHead) as the policy, "
            f"got {type(policy).__name__}"
        )
    return policy.backbone, policy.head


class ActorCritic(nn.Module):
    """The policy and its value function, trained together and checkpointed as one module.

    `critic` given: a separate value model `TaskModel(backbone, ScalarHead)` (InstructGPT initializes it
    from the reward model). `critic=None`: a shared trunk, a `ScalarHead` (`value_head`) on the policy's
    own backbone, so one forward gives logits and values.
    """

    def __init__(self, policy: TaskModel, critic: TaskModel | None = None) -> None:
        super().__init__()
        _lm_parts(policy)
        self.policy = policy
        self.critic = critic
        self.value_head: ScalarHead | None = None
        if critic is not None:
            if not isinstance(critic, TaskModel) or not isinstance(critic.head, ScalarHead):
                raise ConfigError(
                    f"the critic must be a TaskModel(backbone, ScalarHead), got {type(critic).__name__}"
                )
        else:
            d_model = policy.config.d_model
            self.value_head = ScalarHead(d_model)
            # Huang et al. detail 2: a fresh scalar head starts with std 1/sqrt(D + 1).
            nn.init.normal_(self.value_head.score.weight, std=1.0 / math.sqrt(d_model + 1))
            self.value_head.to(next(policy.parameters()).device)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, prompt_len: int, temperature: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """Logits (B, N, V) of each response token and values (B, N) of the state before it."""
        hidden = response_hidden(self.policy, input_ids, attention_mask, prompt_len)  # (B, N, D)
        logits = self.policy.head(hidden) / temperature
        if self.critic is None:
            values = self.value_head.score(hidden).squeeze(-1)
        else:
            critic_hidden = response_hidden(self.critic, input_ids, attention_mask, prompt_len)
            values = self.critic.head.score(critic_hidden).squeeze(-1)
        return logits, values.float()


def response_hidden(model: TaskModel, input_ids: Tensor, attention_mask: Tensor, prompt_len: int) -> Tensor:
    """Hidden states (B, N, D) at the positions that predict the response tokens (P - 1 ... P + N - 2)."""
    hidden = model.backbone(input_ids=input_ids, attention_mask=attention_mask)  # (B, P + N, D)
    return hidden[:, prompt_len - 1 : -1]


@contextmanager
def reference_of(policy: nn.Module, reference: nn.Module | None) -> Iterator[nn.Module]:
    """The frozen reference: `reference` when given, else the policy with its adapters disabled."""
    if reference is not None:
        yield reference
        return
    if not adapter_names(policy):
        raise ConfigError(
            "the policy has no adapters, so it cannot serve as its own reference: pass a reference model"
        )
    with disable_adapters(policy) as base:
        yield base


@torch.no_grad()
def response_logprobs(
    model: nn.Module, batch: Rollout, temperature: float = 1.0
) -> Tensor:
    """Log-probs (B, N) of the response tokens under `model` at the sampling temperature (Huang et al.
    detail 6: the logits are divided by the same temperature the sampler used)."""
    _, head = _lm_parts(model)
    hidden = response_hidden(model, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1])
    return gather_logprobs(head(hidden) / temperature, batch.response_ids)


@torch.no_grad()
def evaluate(
    actor: ActorCritic, reference: nn.Module | None, batch: Rollout, temperature: float = 1.0
) -> Rollout:
    """Fill in the actor's log-probs and values and the reference's log-probs (0 outside the response)."""
    logits, values = actor(batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1], temperature)
    mask = batch.response_mask.float()
    batch.logprobs = gather_logprobs(logits, batch.response_ids) * mask
    batch.values = values * mask
    with reference_of(actor.policy, reference) as ref:
        batch.ref_logprobs = response_logprobs(ref, batch, temperature) * mask
    return batch


# --------------------------------------------------------------------------------------------- config


@dataclass
class PPOConfig:
    """PPO's settings; the defaults follow trl's PPO trainer and Huang et al. 2024 where they agree."""

    steps: int = field(default=100, metadata={"help": "rollout batches (PPO steps) to run"})
    batch_size: int = field(default=16, metadata={"help": "prompts per rollout batch"})
    minibatch_size: int = field(default=8, metadata={"help": "responses per optimizer step"})
    epochs: int = field(default=4, metadata={"help": "passes over each rollout batch"})
    max_new_tokens: int = field(default=32, metadata={"help": "longest response"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    kl_coef: float = field(default=0.05, metadata={"help": "β of the KL penalty (initial)"})
    kl_estimator: str = field(default="k1", metadata={"help": "per-token KL in the reward: k1 or k3"})
    target_kl: float = field(default=0.0, metadata={"help": "adaptive β: target KL (0: fixed)"})
    kl_horizon: float = field(default=10000.0, metadata={"help": "adaptive β: samples over which β adapts"})
    missing_eos_penalty: float = field(default=0.0, metadata={"help": "subtracted from scores without EOS"})
    gamma: float = field(default=1.0, metadata={"help": "discount of GAE"})
    lam: float = field(default=0.95, metadata={"help": "λ of GAE"})
    clip_ratio: float = field(default=0.2, metadata={"help": "policy ratio clip ε"})
    value_clip: float = field(default=0.2, metadata={"help": "value clip around the rollout's values"})
    vf_coef: float = field(default=0.1, metadata={"help": "weight of the value loss"})
    whiten_rewards: bool = field(default=False, metadata={"help": "rescale per-token rewards (mean kept)"})
    lr: float = field(default=3e-6, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decay on matrices"})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "AdamW betas"})
    eps: float = field(default=1e-5, metadata={"help": "AdamW epsilon (Huang et al. detail 5: 1e-5)"})
    schedule: str = field(default="linear", metadata={"help": "lr schedule: linear, cosine, constant"})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "final lr as a fraction of the peak"})
    clip_norm: float = field(default=1.0, metadata={"help": "clip the gradient norm (0: off)"})
    seed: int = field(default=0, metadata={"help": "seed of the sampling and minibatch order"})
    out_dir: str = field(default="", metadata={"help": "metrics.jsonl and checkpoints ('': none)"})
    checkpoint_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0: at the end)"})
    keep_last: int = field(default=2, metadata={"help": "keep the newest N checkpoints (0: all)"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in out_dir"})

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        checks = [
            ("steps", self.steps >= 1, "must be >= 1"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("minibatch_size", 1 <= self.minibatch_size <= self.batch_size, "must be in [1, batch_size]"),
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("max_new_tokens", self.max_new_tokens >= 1, "must be >= 1"),
            ("temperature", self.temperature > 0, "must be > 0"),
            ("kl_coef", self.kl_coef >= 0, "must be >= 0"),
            ("kl_estimator", self.kl_estimator in KL_ESTIMATORS, "must be k1 or k3"),
            ("target_kl", self.target_kl >= 0, "must be >= 0"),
            ("gamma", 0 <= self.gamma <= 1, "must be in [0, 1]"),
            ("lam", 0 <= self.lam <= 1, "must be in [0, 1]"),
            ("clip_ratio", self.clip_ratio > 0, "must be > 0"),
            ("value_clip", self.value_clip > 0, "must be > 0"),
            ("lr", self.lr > 0, "must be > 0"),
            ("schedule", self.schedule in ("linear", "cosine", "constant"), "must be linear/cosine/constant"),
        ]
        for key, ok, rule in checks:
            if not ok:
                raise ConfigError(f"PPOConfig.{key}={getattr(self, key)!r}: {rule}")

    def kl_controller(self) -> FixedKL:
        if self.target_kl > 0:
            return AdaptiveKL(self.kl_coef, self.target_kl, self.kl_horizon)
        return FixedKL(self.kl_coef)


# ----------------------------------------------------------------------------------------- the update


def advantages_of(batch: Rollout, beta: float, cfg: PPOConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-token KL (B, N), rewards (B, N), whitened advantages (B, N) and returns (B, N) of a rollout."""
    mask = batch.response_mask.float()
    kl = KL_ESTIMATORS[cfg.kl_estimator](batch.logprobs, batch.ref_logprobs) * mask
    scores = batch.scores
    if cfg.missing_eos_penalty:
        scores = penalize_missing_eos(scores, batch.has_eos, cfg.missing_eos_penalty)
    rewards = token_rewards(scores.to(kl.device), kl, beta, batch.response_mask)
    if cfg.whiten_rewards:
        rewards = whiten(rewards, mask, shift_mean=False) * mask
    advantages, returns = gae(rewards, batch.values, mask, cfg.gamma, cfg.lam)
    # Huang et al. detail 7: advantages are whitened over the whole batch, once, before the epochs.
    advantages = whiten(advantages, mask) * mask if mask.sum() >= 2 else advantages
    return kl, rewards, advantages, returns


def minibatch_loss(
    actor: ActorCritic, batch: Rollout, advantages: Tensor, returns: Tensor, cfg: PPOConfig
) -> tuple[Tensor, dict[str, float]]:
    """The loss of one minibatch, pg + vf_coef · vf, token means over the response; and its metrics."""
    logits, values = actor(batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1], cfg.temperature)
    mask = batch.response_mask
    logprobs = gather_logprobs(logits, batch.response_ids)
    pg = policy_loss(logprobs, batch.logprobs, advantages, mask, cfg.clip_ratio)
    vf = value_loss(values, batch.values, returns, mask, cfg.value_clip)
    pg_loss, vf_loss = masked_mean(pg.loss, mask), masked_mean(vf.loss, mask)
    with torch.no_grad():
        metrics = {
            "policy_loss": float(pg_loss),
            "value_loss": float(vf_loss),
            "clip_fraction": float(pg.clip_fraction),
            "value_clip_fraction": float(vf.clip_fraction),
            "approx_kl": float(pg.approx_kl),
            "entropy": float(masked_mean(entropy(logits), mask)),
            "value_error": float(masked_mean((values - returns) ** 2, mask)),
        }
    return pg_loss + cfg.vf_coef * vf_loss, metrics


def minibatch_updates(
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batch_size: int,
    minibatch_size: int,
    epochs: int,
    clip_norm: float,
    generator: torch.Generator,
    loss_of: Callable[[Tensor], tuple[Tensor, dict[str, float]]],
) -> dict[str, float]:
    """`epochs` passes over a rollout of `batch_size` rows in shuffled minibatches (one optimizer step each,
    `loss_of(row_index)` giving the loss and its metrics), the PPO/GRPO update; returns the mean metrics.
    A minibatch that holds the whole rollout is not shuffled: its loss does not depend on the order."""
    size = minibatch_size or batch_size
    totals: dict[str, float] = {}
    count = 0
    for _ in range(epochs):
        shuffle = size < batch_size
        order = torch.randperm(batch_size, generator=generator) if shuffle else torch.arange(batch_size)
        for start in range(0, batch_size, size):
            loss, metrics = loss_of(order[start : start + size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_norm > 0:
                metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, clip_norm))
            optimizer.step()
            scheduler.step()
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v
            count += 1
    return {k: v / count for k, v in totals.items()}


def ppo_update(
    actor: ActorCritic,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batch: Rollout,
    advantages: Tensor,
    returns: Tensor,
    cfg: PPOConfig,
    generator: torch.Generator,
) -> dict[str, float]:
    """`cfg.epochs` passes over the rollout in shuffled minibatches, one optimizer step each; mean metrics."""

    def loss_of(index: Tensor) -> tuple[Tensor, dict[str, float]]:
        index = index.to(advantages.device)
        return minibatch_loss(actor, batch.rows(index), advantages[index], returns[index], cfg)

    params = [p for p in actor.parameters() if p.requires_grad]
    return minibatch_updates(params, optimizer, scheduler, batch.response_ids.shape[0], cfg.minibatch_size,
                             cfg.epochs, cfg.clip_norm, generator, loss_of)


# ------------------------------------------------------------------------------------------- the driver


@dataclass
class PPOResult:
    history: list[dict[str, Any]]  # one row per PPO step
    step: int
    checkpoint: Path | None
    actor: ActorCritic


class _LoopState:
    """What a checkpoint must carry beside weights, optimizer, scheduler and RNG: β of the KL controller."""

    def __init__(self, kl: FixedKL) -> None:
        self.kl = kl

    def state_dict(self) -> dict[str, Any]:
        return {"kl": self.kl.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kl.load_state_dict(state["kl"])


def prompt_order(n: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Prompt indices of PPO step `step`: consecutive slices of one seeded permutation per pass over the
    prompts, so a resumed run draws the same prompts without keeping any sampler state."""
    out: list[int] = []
    position = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(position, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        take = perm[offset : offset + batch_size - len(out)]
        out.extend(take)
        position += len(take)
    return out


def train_ppo(
    policy: TaskModel,
    prompts: Sequence[str],
    reward: nn.Module | RewardFn,
    cfg: PPOConfig,
    *,
    tokenizer: Any,
    critic: TaskModel | None = None,
    reference: nn.Module | None = None,
    format_prompt: Callable[[str], list[int]] | None = None,
    reward_tokenizer: Any = None,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> PPOResult:
    """Train `policy` with PPO on `prompts` against `reward`; returns the history and the trained actor.

    `reward`: a reward model (an nn.Module scored with `plmkit.alignment.reward_scores` on the policy's own
    tokens; its tokenizer must be the policy's, else wrap it with `reward_model_fn`) or any callable
    `reward_fn(prompts, responses) -> scores`. `critic`: a separate value model (else a value head on the
    policy's trunk). `reference`: the frozen model of the KL penalty; None uses the policy with adapters
    disabled when it has adapters, else a frozen copy of the policy as it starts. `format_prompt` turns a
    prompt into the token ids the policy continues (default: the tokenizer's encoding with its special
    tokens, as `plmkit.alignment.records` encodes SFT prompts).
    """
    from plmkit.training.checkpoint import find_latest, load_checkpoint, save_checkpoint, step_dirs
    from plmkit.training.loop import _MetricsLog, step_generator
    from plmkit.training.optim import build_adamw, build_scheduler, default_param_groups

    if cfg.resume and not cfg.out_dir:
        raise ConfigError("PPOConfig.resume=True needs out_dir to find checkpoints in")
    held = cfg.out_dir and (step_dirs(cfg.out_dir) or (Path(cfg.out_dir) / "metrics.jsonl").is_file())
    if held and not cfg.resume:
        raise ConfigError(
            f"{cfg.out_dir}: already holds a run; set resume=True to continue it or choose another out_dir"
        )
    eos_id = getattr(tokenizer, "eos_id", None)
    if eos_id is None:
        raise ConfigError("PPO needs a tokenizer with an EOS token (responses end and are scored there)")
    pad_id = tokenizer.pad_id if getattr(tokenizer, "pad_id", None) is not None else eos_id
    if not prompts:
        raise ConfigError("PPO got no prompts")
    if isinstance(reward, nn.Module) and reward_tokenizer is not None:
        mine, theirs = _fingerprint(tokenizer), _fingerprint(reward_tokenizer)
        if mine != theirs:
            raise ConfigError(
                "the reward model's tokenizer differs from the policy's; score through text with "
                "plmkit.alignment.reward_model_fn(model, tokenizer) instead"
            )
    # The prompt tokens of `plmkit.alignment.records`, so the policy continues what SFT trained it on.
    encode = format_prompt or (lambda text: tokenizer.encode(text, add_special_tokens=True))
    prompt_ids = [list(encode(p)) for p in prompts]
    context = getattr(policy.config, "max_positions", None)
    for i, ids in enumerate(prompt_ids):
        if not ids:
            raise ConfigError(f"prompt {i} encodes to no tokens")
        if context is not None and len(ids) + cfg.max_new_tokens > context:
            raise ConfigError(
                f"prompt {i} has {len(ids)} tokens: with max_new_tokens={cfg.max_new_tokens} it exceeds the "
                f"context window of {context} tokens"
            )

    torch.manual_seed(cfg.seed)  # like `train`: the run's randomness flows from here and is checkpointed
    if reference is None and not adapter_names(policy):
        reference = copy.deepcopy(policy)  # the policy as it starts, before any resume loads new weights
    if reference is not None:
        reference.eval().requires_grad_(False)
    if isinstance(reward, nn.Module):
        reward.eval().requires_grad_(False)
    actor = ActorCritic(policy, critic)
    actor.eval()  # Huang et al. detail 3: no dropout, so the update's ratio is exactly 1 before it moves
    optimizer = build_adamw(default_param_groups(actor, cfg.weight_decay), cfg.lr, cfg.betas, cfg.eps)
    updates = cfg.steps * cfg.epochs * math.ceil(cfg.batch_size / cfg.minibatch_size)
    scheduler = build_scheduler(
        optimizer, schedule=cfg.schedule, warmup_steps=0, max_steps=updates, min_lr_ratio=cfg.min_lr_ratio
    )
    kl_ctl = cfg.kl_controller()
    state = _LoopState(kl_ctl)
    start = 0
    out_dir = Path(cfg.out_dir) if cfg.out_dir else None
    if cfg.resume:
        latest = find_latest(out_dir)
        if latest is not None:
            start = int(load_checkpoint(latest, actor, optimizer, scheduler, None, state)["step"])
    metrics_log = _MetricsLog(out_dir, start, False) if out_dir is not None else None
    configs = {"ppo": asdict(cfg)}
    history: list[dict[str, Any]] = []
    checkpoint: Path | None = None
    device = next(policy.parameters()).device
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            generator = step_generator("cpu")
            sample_gen = step_generator(device)
            where = f"PPO step {step + 1}"
            index = prompt_order(len(prompts), step, cfg.batch_size, cfg.seed)
            # 1. rollout
            batch = rollout(
                policy, [prompts[i] for i in index], [prompt_ids[i] for i in index],
                max_new_tokens=cfg.max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                temperature=cfg.temperature, generator=sample_gen, tokenizer=tokenizer,
            )
            # 2. score
            batch.scores = score_rollout(reward, batch, where).to(device)
            # 3. evaluate: old log-probs, values, reference log-probs
            evaluate(actor, reference, batch, cfg.temperature)
            kl, rewards, advantages, returns = advantages_of(batch, kl_ctl.value, cfg)
            # 4. update
            metrics = ppo_update(actor, optimizer, scheduler, batch, advantages, returns, cfg, generator)
            mask = batch.response_mask.float()
            mean_kl = float((kl.sum(-1)).mean())
            row = {
                "step": step + 1,
                "reward": float(batch.scores.mean()),
                "kl": mean_kl,
                "kl_coef": kl_ctl.value,
                **metrics,
                "response_length": float(mask.sum(-1).mean()),
                "eos_fraction": float(batch.has_eos.float().mean()),
                "lr": scheduler.get_last_lr()[0],
                "tokens": float(batch.attention_mask.sum()),  # prompt + response tokens of the rollout
                "tokens_per_s": float(batch.attention_mask.sum()) / (time.perf_counter() - t0),
            }
            if not all(math.isfinite(v) for v in row.values()):
                bad = [k for k, v in row.items() if not math.isfinite(v)]
                raise TrainingError(f"{where}: {', '.join(bad)} became NaN or infinite; stopping")
            kl_ctl.update(mean_kl, cfg.batch_size)
            history.append(row)
            if metrics_log is not None:
                metrics_log.write(row)
            if log is not None:
                log(row)
            last = step + 1 == cfg.steps
            due = bool(cfg.checkpoint_every) and (step + 1) % cfg.checkpoint_every == 0
            if out_dir is not None and (last or due):
                checkpoint = save_checkpoint(
                    out_dir, actor, optimizer, scheduler, None, state, step + 1,
                    configs=configs, keep_last=cfg.keep_last,
                )
    finally:
        if metrics_log is not None:
            metrics_log.close()
    return PPOResult(history, max(start, cfg.steps), checkpoint, actor)


def _fingerprint(tokenizer: Any) -> str:
    fingerprint = getattr(tokenizer, "fingerprint", None)
    if callable(fingerprint):
        return fingerprint()
    return json.dumps(getattr(tokenizer, "itos", repr(tokenizer)))
