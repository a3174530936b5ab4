"""Best-of-n sampling on a tiny GPT: the kept response is the highest-scored of the n samples."""

from __future__ import annotations

import math

import pytest
import torch

from plmkit.alignment.best_of_n import best_of_n, best_of_n_kl
from plmkit.alignment.records import tokenize_prompt_response
from plmkit.alignment.reward import reward_model, reward_scores
from plmkit.data.tokenizer import CharTokenizer
from plmkit.errors import ConfigError, TrainingError
from plmkit.models.gpt import GPT2Config, gpt2_lm

torch.set_num_threads(1)

PROMPTS = ["ab", "cd", "dcb"]


def tokenizer() -> CharTokenizer:
    return CharTokenizer(list("abcd"), {"eos": "|"})


def tiny_gpt(seed: int = 0):
    torch.manual_seed(seed)
    return gpt2_lm(GPT2Config(vocab_size=5, max_positions=24, d_model=16, num_layers=1, num_heads=2))


def fraction_of_a(prompts, responses):
    return [r.count("a") / max(len(r), 1) for r in responses]


def test_keeps_the_best_of_n_samples():
    out = best_of_n(tiny_gpt(), fraction_of_a, PROMPTS, 8, tokenizer=tokenizer(), max_new_tokens=6,
                    generator=torch.Generator().manual_seed(0), batch_size=5)  # batches cut across prompts
    assert out.all_scores.shape == (3, 8) and [len(r) for r in out.all_responses] == [8, 8, 8]
    for i in range(3):
        scores = fraction_of_a(None, out.all_responses[i])
        assert out.all_scores[i].tolist() == pytest.approx(scores)
        assert out.scores[i].item() == pytest.approx(max(scores))
        assert out.responses[i] == out.all_responses[i][scores.index(max(scores))]  # the first of ties
    assert out.scores.mean() > out.all_scores.mean()  # the selection is better than a plain sample


def test_a_reward_model_scores_the_records_layout():
    """A reward model reads prompt + response + EOS, the rows it was trained on."""
    tok = tokenizer()
    rm = reward_model(tiny_gpt(seed=3).backbone)
    out = best_of_n(tiny_gpt(), rm, PROMPTS, 4, tokenizer=tok, max_new_tokens=6,
                    generator=torch.Generator().manual_seed(1))
    for i, prompt in enumerate(PROMPTS):
        for j, response in enumerate(out.all_responses[i]):
            row = tokenize_prompt_response(tok, prompt, response, max_length=24)["input_ids"]
            ids = torch.tensor([row])
            expected = reward_scores(rm, ids, torch.ones_like(ids)).item()
            if len(response) < 6:  # responses cut at max_new_tokens have no EOS: not the records layout
                assert out.all_scores[i, j].item() == pytest.approx(expected, abs=1e-5)


def test_n_one_is_a_plain_sample():
    out = best_of_n(tiny_gpt(), fraction_of_a, PROMPTS, 1, tokenizer=tokenizer(), max_new_tokens=6,
                    generator=torch.Generator().manual_seed(0))
    assert out.responses == [r[0] for r in out.all_responses]


def test_best_of_n_kl_bound():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)


def test_bad_input():
    tok = tokenizer()
    with pytest.raises(ConfigError, match="best_of_n needs n >= 1, got 0"):
        best_of_n(tiny_gpt(), fraction_of_a, PROMPTS, 0, tokenizer=tok)
    with pytest.raises(ConfigError, match="best_of_n needs a tokenizer with an EOS token"):
        best_of_n(tiny_gpt(), fraction_of_a, PROMPTS, 2, tokenizer=CharTokenizer(list("abcd")))
    with pytest.raises(ConfigError, match=r"best_of_n samples 0-5: the reward returned \(1,\) scores for 6"):
        best_of_n(tiny_gpt(), lambda p, r: [1.0], PROMPTS[:2], 3, tokenizer=tok, max_new_tokens=4)
    with pytest.raises(TrainingError, match="best_of_n samples 0-5: the reward is nan for response 0"):
        nan = lambda p, r: [float("nan")] * len(r)  # noqa: E731
        best_of_n(tiny_gpt(), nan, PROMPTS[:2], 3, tokenizer=tok, max_new_tokens=4)
