"""PPO's pure math against numbers worked by hand in each test.

trl 1.16 no longer ships a PPO trainer or its helpers (`trl/trainer/ppo_trainer.py`, `masked_whiten`,
`masked_var` and the GAE loop were removed; `trl/experimental` has no PPO either), so GAE, whitening and
the clipped losses are checked against hand-worked values following the formulas of trl's last PPO trainer
(PPOv2) and Huang et al. 2024. trl still ships `entropy_from_logits` and `selective_log_softmax`, checked
here for parity.
"""

from __future__ import annotations

import math

import pytest
import torch

from plmkit.alignment.ppo import (
    AdaptiveKL,
    FixedKL,
    entropy,
    gae,
    kl_k1,
    kl_k3,
    masked_mean,
    penalize_missing_eos,
    policy_loss,
    token_rewards,
    value_loss,
    whiten,
)
from plmkit.errors import ConfigError

torch.set_num_threads(1)


def test_kl_estimators_golden():
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # k1 = log(0.5/0.25) = ln 2; k3 = (r - 1) - log r with r = 0.25/0.5: -0.5 + ln 2
    assert kl_k1(lp, ref).item() == pytest.approx(math.log(2), abs=1e-7)
    assert kl_k3(lp, ref).item() == pytest.approx(math.log(2) - 0.5, abs=1e-7)
    # equal distributions: both exactly 0; k3 is never negative, k1 can be
    same = torch.tensor([-1.3, -0.2])
    assert torch.equal(kl_k1(same, same), torch.zeros(2))
    assert torch.equal(kl_k3(same, same), torch.zeros(2))
    lp, ref = torch.tensor([math.log(0.25)]), torch.tensor([math.log(0.5)])
    assert kl_k1(lp, ref).item() < 0 < kl_k3(lp, ref).item()


def test_kl_estimators_are_unbiased_for_the_true_kl():
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.3, 0.5])
    true_kl = float((p * (p / q).log()).sum())
    a = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    lp, ref = p.log()[a], q.log()[a]
    assert kl_k1(lp, ref).mean().item() == pytest.approx(true_kl, abs=5e-3)
    assert kl_k3(lp, ref).mean().item() == pytest.approx(true_kl, abs=5e-3)
    assert kl_k3(lp, ref).var().item() < kl_k1(lp, ref).var().item()


def test_token_rewards_golden():
    scores = torch.tensor([1.0, -2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards = token_rewards(scores, kl, 0.5, mask)
    # -β·kl everywhere in the response, the score added at the last response token, 0 after it
    expected = torch.tensor([[-0.05, -0.10, -0.15 + 1.0], [-0.20, -0.25 - 2.0, 0.0]])
    torch.testing.assert_close(rewards, expected)


def test_missing_eos_penalty():
    out = penalize_missing_eos(torch.tensor([1.0, 2.0]), torch.tensor([True, False]), 1.0)
    assert out.tolist() == [1.0, 1.0]


def test_gae_golden():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0: δ2 = 1 - 0.7 = 0.3,  A2 = 0.3
    #        δ1 = 0.9·0.7 - 0.6 = 0.03, A1 = 0.03 + 0.45·0.3 = 0.165
    #        δ0 = 0.9·0.6 - 0.5 = 0.04, A0 = 0.04 + 0.45·0.165 = 0.11425
    # row 1 (last token masked: its reward 9 and value 5 are not part of the episode):
    #        δ1 = 2 - 1 = 1, A1 = 1;  δ0 = 0.9·1 - 1 = -0.1, A0 = -0.1 + 0.45·1 = 0.35
    torch.testing.assert_close(adv, torch.tensor([[0.11425, 0.165, 0.3], [0.35, 1.0, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.61425, 0.765, 1.0], [1.35, 2.0, 0.0]]))


def test_gae_lambda_one_gamma_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.5, -1.0, 2.0, 0.25]])
    values = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    adv, ret = gae(rewards, values, torch.ones(1, 4), gamma=1.0, lam=1.0)
    to_go = torch.tensor([[1.75, 1.25, 2.25, 0.25]])
    torch.testing.assert_close(ret, to_go)
    torch.testing.assert_close(adv, to_go - values)


def test_whiten_golden():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1, 1, 1, 0])
    # masked mean 2, unbiased variance (1 + 0 + 1) / 2 = 1
    scale = 1 / math.sqrt(1 + 1e-8)
    out = whiten(values, mask)
    torch.testing.assert_close(out[:3], torch.tensor([-scale, 0.0, scale]))
    kept_mean = whiten(values, mask, shift_mean=False)[:3]
    torch.testing.assert_close(kept_mean, torch.tensor([2 - scale, 2.0, 2 + scale]))
    with pytest.raises(ConfigError, match="at least 2 masked entries"):
        whiten(values, torch.tensor([0, 0, 1, 0]))


def test_masked_mean():
    assert masked_mean(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1, 1, 0])).item() == 2.0
    assert masked_mean(torch.tensor([1.0]), torch.tensor([0])).item() == 0.0


def test_policy_loss_golden():
    ratio = torch.tensor([[1.5, 0.5, 1.1, 0.7]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    old = torch.zeros(1, 4)
    out = policy_loss(ratio.log(), old, advantages, torch.ones(1, 4), clip_ratio=0.2)
    # max(-A·ρ, -A·clip(ρ, 0.8, 1.2)):
    #   ρ=1.5, A=+1: max(-1.5, -1.2) = -1.2 (clipped)   ρ=0.5, A=+1: max(-0.5, -0.8) = -0.5
    #   ρ=1.1, A=-1: max(1.1, 1.1) = 1.1                 ρ=0.7, A=-1: max(0.7, 0.8) = 0.8 (clipped)
    torch.testing.assert_close(out.loss, torch.tensor([[-1.2, -0.5, 1.1, 0.8]]))
    assert out.clip_fraction.item() == pytest.approx(0.5)
    logs = [math.log(1.5), math.log(0.5), math.log(1.1), math.log(0.7)]
    assert out.approx_kl.item() == pytest.approx(0.5 * sum(x * x for x in logs) / 4, rel=1e-6)


def test_policy_loss_gradient_sign():
    """Minimizing the loss raises the log-prob of a positive-advantage token and lowers a negative one."""
    logprobs = torch.zeros(1, 2, requires_grad=True)
    out = policy_loss(logprobs, torch.zeros(1, 2), torch.tensor([[2.0, -3.0]]), torch.ones(1, 2), 0.2)
    out.loss.sum().backward()
    assert logprobs.grad.tolist() == [[-2.0, 3.0]]


def test_value_loss_golden():
    values = torch.tensor([[1.0, 0.0, 2.0]])
    old = torch.tensor([[0.5, 0.5, 2.0]])
    returns = torch.tensor([[2.0, 2.0, 1.0]])
    out = value_loss(values, old, returns, torch.ones(1, 3), clip_range=0.2)
    # t0: V_c = 0.7, max((1-2)², (0.7-2)²) = 1.69 (clipped) -> 0.845
    # t1: V_c = 0.3, max((0-2)², (0.3-2)²) = 4 -> 2.0;   t2: max(1, 1) -> 0.5
    torch.testing.assert_close(out.loss, torch.tensor([[0.845, 2.0, 0.5]]))
    assert out.clip_fraction.item() == pytest.approx(1 / 3)


def test_entropy_golden_and_trl_parity():
    from trl.trainer.utils import entropy_from_logits

    assert entropy(torch.zeros(4)).item() == pytest.approx(math.log(4))
    two = torch.tensor([0.0, math.log(3.0)])  # probabilities 1/4, 3/4
    assert entropy(two).item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)
    logits = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(entropy(logits), entropy_from_logits(logits))


def test_adaptive_kl_controller_golden():
    ctl = AdaptiveKL(0.1, target=6.0, horizon=10000)
    ctl.update(12.0, 256)  # error clipped to +0.2: β · (1 + 0.2·256/10000)
    assert ctl.value == pytest.approx(0.1 * 1.00512)
    ctl = AdaptiveKL(0.1, target=6.0, horizon=10000)
    ctl.update(3.0, 256)  # error -0.5 clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * 0.99488)
    ctl = AdaptiveKL(0.1, target=6.0, horizon=100)
    ctl.update(6.6, 10)  # error 0.1: β · (1 + 0.1·10/100)
    assert ctl.value == pytest.approx(0.101)
    fixed = FixedKL(0.2)
    fixed.update(100.0, 64)
    assert fixed.value == 0.2
    restored = AdaptiveKL(1.0, 6.0, 100)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value
    with pytest.raises(ConfigError, match="target > 0"):
        AdaptiveKL(0.1, target=0.0, horizon=10)
