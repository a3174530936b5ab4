"""Alignment: SFT, reward models, DPO/IPO (and PPO) on plmkit's own models, loop and generation.

One file per idea: `records` (data formats, tokenization, batches), `logprobs` (the shared per-token and
per-sequence log-probs), `sft`, `reward` (Bradley–Terry reward models), `dpo` (DPO, IPO, soft labels).
`grpo` (GRPO and rule rewards) and `constitution` (Constitutional AI: critique/revision, AI feedback) are
imported as modules: `from plmkit.alignment.grpo import train_grpo`.
"""

from __future__ import annotations

from plmkit.alignment.best_of_n import BestOfN, best_of_n
from plmkit.alignment.dpo import (
    PreferenceConfig,
    PreferenceMetrics,
    dpo_loss,
    implicit_rewards,
    ipo_loss,
    pair_logprobs,
    preference_loss,
    preference_metrics,
    preference_step,
    robust_dpo_loss,
)
from plmkit.alignment.logprobs import gather_logprobs, sequence_logprobs, token_logprobs
from plmkit.alignment.policy_eval import sample_with_kl
from plmkit.alignment.ppo import (
    PPOConfig,
    gae,
    kl_k1,
    kl_k3,
    policy_loss,
    reward_model_fn,
    train_ppo,
    value_loss,
    whiten,
)
from plmkit.alignment.records import (
    collate_preferences,
    collate_prompt_responses,
    encode_preferences,
    encode_prompt_responses,
    pack_prompt_responses,
    read_preferences,
    read_prompt_responses,
    split_hh_transcript,
    tokenize_prompt_response,
)
from plmkit.alignment.reward import (
    bradley_terry_loss,
    evaluate_pairs,
    pairwise_accuracy,
    reward_model,
    reward_scores,
    reward_step,
    save_reward_model,
)
from plmkit.alignment.sft import sft_loss, sft_step

__all__ = [
    "BestOfN",
    "PPOConfig",
    "PreferenceConfig",
    "PreferenceMetrics",
    "best_of_n",
    "bradley_terry_loss",
    "collate_preferences",
    "collate_prompt_responses",
    "dpo_loss",
    "encode_preferences",
    "encode_prompt_responses",
    "pack_prompt_responses",
    "evaluate_pairs",
    "gae",
    "gather_logprobs",
    "implicit_rewards",
    "ipo_loss",
    "kl_k1",
    "kl_k3",
    "pair_logprobs",
    "pairwise_accuracy",
    "policy_loss",
    "preference_loss",
    "preference_metrics",
    "preference_step",
    "read_preferences",
    "read_prompt_responses",
    "reward_model",
    "reward_model_fn",
    "reward_scores",
    "reward_step",
    "sample_with_kl",
    "save_reward_model",
    "robust_dpo_loss",
    "sequence_logprobs",
    "sft_loss",
    "sft_step",
    "split_hh_transcript",
    "token_logprobs",
    "tokenize_prompt_response",
    "train_ppo",
    "value_loss",
    "whiten",
]
