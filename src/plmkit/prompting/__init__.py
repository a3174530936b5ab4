"""Prompting without gradient updates: few-shot prompts, label-word scoring, chain-of-thought answers.

    prompt = build_few_shot_prompt("Review: {sentence}\\nSentiment:{label}", train, {"sentence": s}, k=4)
    scores = score_label_words(model, tokenizer, [prompt], {0: " negative", 1: " positive"})  # (1, 2)
    answer = extract_answer("... 8 - 2 = 6.\\n#### 6")                                      # "6"
    final = self_consistency(["6", "7", "6"])                                                # "6"

GPT-3 (Brown et al. 2020) conditions a causal LM on k demonstrations; classification reads the
log-probability of each label word's continuation (the "verbalizer" of PET, Schick & Schütze 2021).
Chain-of-thought (Wei et al. 2022) ends with a final answer; self-consistency (Wang et al. 2023) takes the
majority answer over sampled solutions.
"""

from __future__ import annotations

from plmkit.prompting.answers import extract_answer, normalize_number, self_consistency, vote_share
from plmkit.prompting.few_shot import build_few_shot_prompt, render
from plmkit.prompting.scoring import (
    continuation_logprobs,
    next_token_logprobs,
    predict_labels,
    score_label_words,
)

__all__ = [
    "build_few_shot_prompt",
    "render",
    "score_label_words",
    "continuation_logprobs",
    "next_token_logprobs",
    "predict_labels",
    "extract_answer",
    "normalize_number",
    "self_consistency",
    "vote_share",
]
