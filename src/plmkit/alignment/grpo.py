"""GRPO: reinforcement learning from verifiable rewards without a value model (Shao et al. 2024,
"DeepSeekMath", sec. 4.1), with the length-unbiased loss of Dr. GRPO (Liu et al. 2025, "Understanding
R1-Zero-Like Training") and DAPO's token-level mean (Yu et al. 2025).

For each prompt the policy samples a group of G responses; a rule scores each one (the final answer is
right, the format is followed); a response's advantage is its reward relative to its own group,

    A_i = (r_i - mean(r_group)) / (std(r_group) + 1e-4)     (std: unbiased, as trl; `scale_rewards=False`
                                                              drops the division, Dr. GRPO's choice)

the same for every token of the response. The per-token loss is PPO's clipped surrogate plus β times
the k3 estimate of KL(π || π_ref) (`plmkit.alignment.ppo.kl_k3`; the reference of a LoRA policy is the
policy with its adapters disabled), weighted by ρ_t unless `kl_correction=False` (DeepSeekMath's original):

    ρ_t = π(y_t) / π_old(y_t);   ℓ_t = -min(ρ_t A, clip(ρ_t, 1-ε, 1+ε) A) + β ρ_t k3_t

and the three variants differ only in how ℓ is averaged over a batch of B responses:

    grpo_loss     mean over responses of (sum of the response's ℓ_t / its length)     (DeepSeekMath eq. 3)
    dapo_loss     sum of all ℓ_t / number of response tokens in the batch           (DAPO, trl's "bnpo")
    dr_grpo_loss  sum of all ℓ_t / (B · max_new_tokens)                            (Dr. GRPO: no length bias)

GRPO's per-response mean gives a long wrong answer a smaller per-token penalty than a short one, which
Liu et al. (sec. 3.1) find makes wrong responses grow longer; Dr. GRPO's constant normalizer removes
that bias.

Rewards are Python callables `reward_fn(prompts, responses) -> scores` (one float per response):
`answer_reward` (the final answer, read with `plmkit.prompting.extract_answer`, equals the reference, as
GSM8K's "#### N") and `format_reward` (the response ends in a "#### N" line). `combine_rewards` sums
several with weights, checking each one's output.

The outer loop of `train_grpo` is the PPO driver's (`plmkit.alignment.ppo`) without a critic: rollout
(G samples per prompt over the KV cache), score, old and reference log-probs, then `epochs` passes of
minibatch updates; optimizer, schedule, checkpoints and resume come from `plmkit.training`.

Shape legend: B responses (prompts x G), N response length.
"""

from __future__ import annotations

import copy
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from plmkit.alignment.logprobs import gather_logprobs
from plmkit.alignment.ppo import (
    RewardFn,
    Rollout,
    check_scores,
    kl_k3,
    masked_mean,
    minibatch_updates,
    policy_loss,
    prompt_order,
    reference_of,
    response_hidden,
    response_logprobs,
    rollout,
)
from plmkit.errors import ConfigError, TrainingError
from plmkit.models.heads import TaskModel
from plmkit.peft import adapter_names
from plmkit.prompting.answers import extract_answer, normalize_number

# ------------------------------------------------------------------------------------------ pure math


def group_advantages(rewards: Tensor, group_size: int, *, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """Rewards (B,) of consecutive groups of `group_size` responses -> advantages (B,): each reward minus
    its group's mean, divided by the group's unbiased std + eps when `scale` (GRPO), not (Dr. GRPO)."""
    if group_size < 1 or rewards.dim() != 1 or rewards.shape[0] % group_size:
        raise ConfigError(f"{tuple(rewards.shape)} rewards do not split into groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)  # (B / G, G)
    centered = grouped - grouped.mean(-1, keepdim=True)
    if scale:
        std = grouped.std(-1, keepdim=True) if group_size > 1 else torch.zeros_like(centered[:, :1])
        centered = centered / (std + eps)
    return centered.reshape(-1)


@dataclass
class TokenLoss:
    loss: Tensor  # (B, N) per-token clipped surrogate + β k3
    kl: Tensor  # (B, N) per-token k3 estimate of KL(π || π_ref) (zeros when there is no reference)
    clip_fraction: Tensor  # scalar over the mask


def grpo_token_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    ref_logprobs: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    clip_ratio: float = 0.2,
    beta: float = 0.0,
    kl_correction: bool = True,
) -> TokenLoss:
    """ℓ_t of the module docstring: (B, N) log-probs, advantages (B,) or (B, N), mask (B, N).

    `kl_correction` weighs each k3 term by the ratio ρ_t (DeepSeek-V3.2, eq. 8; trl's default
    `use_bias_correction_kl`): the samples come from π_old, so without ρ the KL gradient is biased once the
    policy has moved, and even at ρ = 1 the gradient of ρ adds the term that makes it the reverse-KL gradient.
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    surrogate = policy_loss(logprobs, old_logprobs, advantages, mask, clip_ratio)
    kl = kl_k3(logprobs, ref_logprobs) if ref_logprobs is not None else torch.zeros_like(logprobs)
    if not beta:
        return TokenLoss(surrogate.loss, kl, surrogate.clip_fraction)
    weighted = kl * torch.exp(logprobs - old_logprobs) if kl_correction else kl
    return TokenLoss(surrogate.loss + beta * weighted, kl, surrogate.clip_fraction)


def grpo_loss(token_loss: Tensor, mask: Tensor) -> Tensor:
    """DeepSeekMath's average: each response's mean over its tokens, then the mean over responses."""
    mask = mask.to(token_loss.dtype)
    return ((token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def dapo_loss(token_loss: Tensor, mask: Tensor) -> Tensor:
    """DAPO's token-level average: every response token of the batch weighs the same."""
    return masked_mean(token_loss, mask)


def dr_grpo_loss(token_loss: Tensor, mask: Tensor, max_new_tokens: int) -> Tensor:
    """Dr. GRPO: the sum over response tokens divided by a constant, B · max_new_tokens."""
    mask = mask.to(token_loss.dtype)
    return (token_loss * mask).sum() / (token_loss.shape[0] * max_new_tokens)


LOSSES: dict[str, Callable[..., Tensor]] = {"grpo": grpo_loss, "dapo": dapo_loss, "dr_grpo": dr_grpo_loss}


def aggregate(loss_type: str, token_loss: Tensor, mask: Tensor, max_new_tokens: int) -> Tensor:
    """The batch loss of `loss_type` (a key of LOSSES)."""
    if loss_type == "dr_grpo":
        return dr_grpo_loss(token_loss, mask, max_new_tokens)
    if loss_type not in LOSSES:
        raise ConfigError(f"loss_type {loss_type!r} is not one of {', '.join(LOSSES)}")
    return LOSSES[loss_type](token_loss, mask)


# -------------------------------------------------------------------------------------------- rewards


_FINAL_LINE = re.compile(r"####\s*-?\$?\d[\d,]*(?:\.\d+)?\s*$")


def reference_answer(text: str) -> str:
    """The answer a reference solution states (GSM8K's "#### N"), normalized; the text itself when none."""
    answer = extract_answer(text)
    return normalize_number(answer) if answer is not None else text.strip()


def answer_reward(
    references: Mapping[str, str] | Sequence[str], prompts: Sequence[str] | None = None
) -> RewardFn:
    """1.0 where the response's final answer (`extract_answer`) equals the prompt's reference answer, else 0.

    `references` maps each prompt to its reference (a number, or a whole GSM8K solution ending "#### N"),
    or is a list aligned with `prompts`.
    """
    if not isinstance(references, Mapping):
        if prompts is None or len(prompts) != len(references):
            raise ConfigError("answer_reward needs one reference per prompt (or a dict prompt -> reference)")
        references = dict(zip(prompts, references))
    answers = {prompt: reference_answer(ref) for prompt, ref in references.items()}

    def reward(prompts: list[str], responses: list[str]) -> list[float]:
        scores = []
        for prompt, response in zip(prompts, responses):
            if prompt not in answers:
                raise ConfigError(f"answer_reward: no reference answer for prompt {prompt[:60]!r}")
            scores.append(1.0 if extract_answer(response) == answers[prompt] else 0.0)
        return scores

    return reward


def format_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """1.0 where the response ends in a GSM8K final-answer line "#### N", else 0."""
    return [1.0 if _FINAL_LINE.search(response.strip()) else 0.0 for response in responses]


def combine_rewards(
    reward_fns: Mapping[str, RewardFn], weights: Mapping[str, float] | None = None
) -> RewardFn:
    """One reward: the weighted sum of named reward functions, each checked to return one finite score per
    response (a one-line error names the function otherwise). The parts are kept in `reward.parts`."""
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(reward_fns))
    if unknown:
        raise ConfigError(f"a weight for reward {unknown[0]!r}, which is not one of {', '.join(reward_fns)}")

    def reward(prompts: list[str], responses: list[str]) -> Tensor:
        total = torch.zeros(len(responses))
        reward.parts = {}
        for name, fn in reward_fns.items():
            scores = check_scores(fn(list(prompts), list(responses)), len(responses), f"reward {name!r}")
            reward.parts[name] = scores
            total = total + weights.get(name, 1.0) * scores
        return total

    reward.parts = {}
    return reward


# ------------------------------------------------------------------------------------------- the driver


@dataclass
class GRPOConfig:
    """GRPO's settings; the defaults follow trl's GRPOTrainer where it has one."""

    steps: int = field(default=100, metadata={"help": "rollout batches (GRPO steps) to run"})
    prompts_per_step: int = field(default=4, metadata={"help": "prompts per rollout batch"})
    group_size: int = field(default=8, metadata={"help": "G: responses sampled per prompt"})
    minibatch_size: int = field(
        default=0, metadata={"help": "responses per optimizer step (0: the whole batch)"}
    )
    epochs: int = field(default=1, metadata={"help": "μ: passes over each rollout batch"})
    max_new_tokens: int = field(default=64, metadata={"help": "longest response"})
    temperature: float = field(
        default=1.0, metadata={"help": "sampling temperature (logits are divided too)"}
    )
    beta: float = field(
        default=0.04, metadata={"help": "weight of the k3 KL to the reference (0: no reference)"}
    )
    kl_correction: bool = field(
        default=True, metadata={"help": "weigh the k3 KL by the ratio π/π_old (DeepSeek-V3.2; trl's default)"}
    )
    clip_ratio: float = field(default=0.2, metadata={"help": "policy ratio clip ε"})
    scale_rewards: bool = field(
        default=True, metadata={"help": "divide advantages by the group std (Dr. GRPO: off)"}
    )
    loss_type: str = field(default="grpo", metadata={"help": "grpo, dapo (token mean) or dr_grpo (constant)"})
    lr: float = field(default=1e-6, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decay on matrices"})
    betas: tuple[float, float] = field(default=(0.9, 0.99), metadata={"help": "AdamW betas"})
    eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    schedule: str = field(default="constant", metadata={"help": "lr schedule: constant, linear or cosine"})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "final lr as a fraction of the peak"})
    clip_norm: float = field(default=1.0, metadata={"help": "clip the gradient norm (0: off)"})
    seed: int = field(default=0, metadata={"help": "seed of the sampling and prompt order"})
    out_dir: str = field(default="", metadata={"help": "metrics.jsonl and checkpoints ('': none)"})
    checkpoint_every: int = field(
        default=0, metadata={"help": "checkpoint every N steps (0: only at the end)"}
    )
    keep_last: int = field(default=2, metadata={"help": "keep the newest N checkpoints (0: all)"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in out_dir"})

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        batch = self.prompts_per_step * self.group_size
        checks = [
            ("steps", self.steps >= 1, "must be >= 1"),
            ("prompts_per_step", self.prompts_per_step >= 1, "must be >= 1"),
            ("group_size", self.group_size >= 2, "must be >= 2 (a group of one has no baseline)"),
            (
                "minibatch_size",
                0 <= self.minibatch_size <= batch,
                f"must be in [0, prompts_per_step * group_size = {batch}]",
            ),
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("max_new_tokens", self.max_new_tokens >= 1, "must be >= 1"),
            ("temperature", self.temperature > 0, "must be > 0"),
            ("beta", self.beta >= 0, "must be >= 0"),
            ("clip_ratio", self.clip_ratio > 0, "must be > 0"),
            ("loss_type", self.loss_type in LOSSES, f"must be one of {', '.join(LOSSES)}"),
            ("lr", self.lr > 0, "must be > 0"),
            (
                "schedule",
                self.schedule in ("linear", "cosine", "constant"),
                "must be linear, cosine or constant",
            ),
            ("resume", not (self.resume and not self.out_dir), "needs out_dir to find checkpoints in"),
        ]
        for key, ok, rule in checks:
            if not ok:
                raise ConfigError(f"GRPOConfig.{key}={getattr(self, key)!r}: {rule}")

    @property
    def batch_size(self) -> int:
        return self.prompts_per_step * self.group_size


def policy_logprobs(policy: TaskModel, batch: Rollout, temperature: float = 1.0) -> Tensor:
    """Log-probs (B, N) of the response tokens under the policy, with gradients (cf. `response_logprobs`)."""
    hidden = response_hidden(policy, batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1])
    return gather_logprobs(policy.head(hidden) / temperature, batch.response_ids)


def minibatch_loss(
    policy: TaskModel, batch: Rollout, advantages: Tensor, cfg: GRPOConfig
) -> tuple[Tensor, dict[str, float]]:
    """The loss of one minibatch of a scored rollout (old and reference log-probs filled in), its metrics."""
    mask = batch.response_mask
    logprobs = policy_logprobs(policy, batch, cfg.temperature)
    ref = batch.ref_logprobs if cfg.beta else None
    token = grpo_token_loss(
        logprobs, batch.logprobs, ref, advantages, mask, cfg.clip_ratio, cfg.beta, cfg.kl_correction
    )
    loss = aggregate(cfg.loss_type, token.loss, mask, cfg.max_new_tokens)
    metrics = {"loss": float(loss.detach()), "clip_fraction": float(token.clip_fraction)}
    if ref is not None:
        metrics["kl"] = float(masked_mean(token.kl.detach(), mask))
    return loss, metrics


def grpo_update(
    policy: TaskModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batch: Rollout,
    advantages: Tensor,
    cfg: GRPOConfig,
    generator: torch.Generator,
) -> dict[str, float]:
    """`cfg.epochs` passes over the rollout in shuffled minibatches, one optimizer step each; mean metrics."""

    def loss_of(index: Tensor) -> tuple[Tensor, dict[str, float]]:
        index = index.to(advantages.device)
        return minibatch_loss(policy, batch.rows(index), advantages[index], cfg)

    params = [p for p in policy.parameters() if p.requires_grad]
    return minibatch_updates(params, optimizer, scheduler, batch.response_ids.shape[0], cfg.minibatch_size,
                             cfg.epochs, cfg.clip_norm, generator, loss_of)


@dataclass
class GRPOResult:
    history: list[dict[str, Any]]  # one row per GRPO step
    step: int
    checkpoint: Path | None


def train_grpo(
    policy: TaskModel,
    prompts: Sequence[str],
    reward: RewardFn,
    cfg: GRPOConfig,
    *,
    tokenizer: Any,
    reference: nn.Module | None = None,
    format_prompt: Callable[[str], list[int]] | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> GRPOResult:
    """Train `policy` with GRPO on `prompts` against `reward(prompts, responses) -> scores`.

    `reference`: the frozen model of the KL term; None uses the policy with adapters disabled when it has
    adapters, else a frozen copy of the policy as it starts (not built when `beta` is 0). `format_prompt`
    turns a prompt into the token ids the policy continues (default: the tokenizer's encoding with its
    special tokens, as SFT encodes prompts).
    """
    from plmkit.training.checkpoint import find_latest, load_checkpoint, save_checkpoint
    from plmkit.training.loop import _MetricsLog, step_generator
    from plmkit.training.optim import build_adamw, build_scheduler, default_param_groups

    eos_id = getattr(tokenizer, "eos_id", None)
    if eos_id is None:
        raise ConfigError("GRPO needs a tokenizer with an EOS token (responses end there)")
    pad_id = tokenizer.pad_id if getattr(tokenizer, "pad_id", None) is not None else eos_id
    if not prompts:
        raise ConfigError("GRPO got no prompts")
    if not callable(reward) or isinstance(reward, nn.Module):
        raise ConfigError("GRPO's reward must be a callable reward_fn(prompts, responses) -> scores")
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

    torch.manual_seed(cfg.seed)  # as `train` does: the run's randomness flows from here and is checkpointed
    if cfg.beta and reference is None and not adapter_names(policy):
        reference = copy.deepcopy(policy)  # the policy as it starts, before a resume loads new weights
    if reference is not None:
        reference.eval().requires_grad_(False)
    policy.eval()  # no dropout: the ratio is exactly 1 before the first update moves the policy
    optimizer = build_adamw(default_param_groups(policy, cfg.weight_decay), cfg.lr, cfg.betas, cfg.eps)
    updates = cfg.steps * cfg.epochs * math.ceil(cfg.batch_size / (cfg.minibatch_size or cfg.batch_size))
    scheduler = build_scheduler(
        optimizer, schedule=cfg.schedule, warmup_steps=0, max_steps=updates, min_lr_ratio=cfg.min_lr_ratio
    )
    start = 0
    out_dir = Path(cfg.out_dir) if cfg.out_dir else None
    if cfg.resume:
        latest = find_latest(out_dir)
        if latest is not None:
            start = int(load_checkpoint(latest, policy, optimizer, scheduler)["step"])
    metrics_log = _MetricsLog(out_dir, start, False) if out_dir is not None else None
    configs = {"grpo": asdict(cfg)}
    history: list[dict[str, Any]] = []
    checkpoint: Path | None = None
    device = next(policy.parameters()).device
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            generator = step_generator("cpu")
            sample_gen = step_generator(device)
            where = f"GRPO step {step + 1}"
            index = [
                i
                for i in prompt_order(len(prompts), step, cfg.prompts_per_step, cfg.seed)
                for _ in range(cfg.group_size)
            ]  # each prompt G times, its group consecutive
            # 1. rollout
            batch = rollout(
                policy,
                [prompts[i] for i in index],
                [prompt_ids[i] for i in index],
                max_new_tokens=cfg.max_new_tokens,
                eos_id=eos_id,
                pad_id=pad_id,
                temperature=cfg.temperature,
                generator=sample_gen,
                tokenizer=tokenizer,
            )
            # 2. score, and each response's advantage within its group
            scores = check_scores(reward(list(batch.prompts), list(batch.responses)), len(index), where)
            batch.scores = scores.to(device)
            advantages = group_advantages(batch.scores, cfg.group_size, scale=cfg.scale_rewards)
            # 3. old and reference log-probs
            mask = batch.response_mask.float()
            batch.logprobs = response_logprobs(policy, batch, cfg.temperature) * mask
            if cfg.beta:
                with reference_of(policy, reference) as ref:
                    batch.ref_logprobs = response_logprobs(ref, batch, cfg.temperature) * mask
            # 4. update
            metrics = grpo_update(policy, optimizer, scheduler, batch, advantages, cfg, generator)
            grouped = batch.scores.view(-1, cfg.group_size)
            row = {
                "step": step + 1,
                "reward": float(batch.scores.mean()),
                "reward_std": float(grouped.std(-1).mean()),
                **{f"reward/{k}": float(v.mean()) for k, v in getattr(reward, "parts", {}).items()},
                "zero_std_groups": float((grouped.std(-1) == 0).float().mean()),
                **metrics,
                "response_length": float(mask.sum(-1).mean()),
                "eos_fraction": float(batch.has_eos.float().mean()),
                "lr": scheduler.get_last_lr()[0],
                "tokens_per_s": float(batch.attention_mask.sum()) / (time.perf_counter() - t0),
            }
            if not all(math.isfinite(v) for v in row.values()):
                bad = [k for k, v in row.items() if not math.isfinite(v)]
                raise TrainingError(f"{where}: {', '.join(bad)} became NaN or infinite; stopping")
            history.append(row)
            if metrics_log is not None:
                metrics_log.write(row)
            if log is not None:
                log(row)
            last = step + 1 == cfg.steps
            if out_dir is not None and (
                last or (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0)
            ):
                checkpoint = save_checkpoint(
                    out_dir,
                    policy,
                    optimizer,
                    scheduler,
                    None,
                    None,
                    step + 1,
                    configs=configs,
                    keep_last=cfg.keep_last,
                )
    finally:
        if metrics_log is not None:
            metrics_log.close()
    return GRPOResult(history, max(start, cfg.steps), checkpoint)
