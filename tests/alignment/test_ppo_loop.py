"""The PPO driver on a tiny GPT over a character vocabulary: invariants, learning, resume, bad input."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from plmkit.alignment.ppo import (
    ActorCritic,
    PPOConfig,
    evaluate,
    kl_k1,
    kl_k3,
    prompt_order,
    reference_of,
    response_logprobs,
    rollout,
    train_ppo,
)
from plmkit.alignment.reward import reward_model
from plmkit.data.tokenizer import CharTokenizer
from plmkit.errors import ConfigError, TrainingError
from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.peft import LoRAConfig, apply_lora

torch.set_num_threads(1)

PROMPTS = ["ab", "cd", "abc", "dcb", "b", "ca"]


def tokenizer() -> CharTokenizer:
    return CharTokenizer(list("abcd"), {"eos": "|"})


def tiny_gpt(seed: int = 0, vocab: int = 5):
    torch.manual_seed(seed)
    return gpt2_lm(GPT2Config(vocab_size=vocab, max_positions=24, d_model=16, num_layers=1, num_heads=2))


def fraction_of_a(prompts: list[str], responses: list[str]) -> list[float]:
    return [r.count("a") / max(len(r), 1) for r in responses]


def small_cfg(**kw) -> PPOConfig:
    base = dict(steps=4, batch_size=8, minibatch_size=4, epochs=2, max_new_tokens=5, lr=1e-2, kl_coef=0.05)
    return PPOConfig(**{**base, **kw})


def sample(policy, tok, seed=0):
    ids = [tok.encode(p) for p in PROMPTS]
    return rollout(policy, PROMPTS, ids, max_new_tokens=6, eos_id=tok.eos_id, pad_id=tok.eos_id,
                   generator=torch.Generator().manual_seed(seed), tokenizer=tok)


def test_rollout_layout():
    tok = tokenizer()
    batch = sample(tiny_gpt(), tok)
    b, n = batch.response_ids.shape
    assert b == len(PROMPTS) and n <= 6
    for row, (ids, mask) in enumerate(zip(batch.response_ids.tolist(), batch.response_mask.tolist())):
        length = sum(mask)
        assert mask == [1] * length + [0] * (n - length)  # right-padded, no holes
        assert (tok.eos_id in ids[:length]) == bool(batch.has_eos[row])
        if batch.has_eos[row]:
            assert ids[length - 1] == tok.eos_id and tok.eos_id not in ids[: length - 1]
        assert batch.responses[row] == tok.decode(ids[:length])
    # prompts are left-padded: the last prompt position is always real
    assert bool(batch.prompt_mask[:, -1].all())


@pytest.mark.parametrize("shared", [True, False])
def test_step_zero_policy_equals_reference_so_kl_is_zero(shared):
    tok = tokenizer()
    policy = tiny_gpt()
    critic = None if shared else reward_model(tiny_gpt(seed=1).backbone)
    actor = ActorCritic(policy, critic)
    batch = evaluate(actor, copy.deepcopy(policy), sample(policy, tok))
    mask = batch.response_mask.bool()
    assert torch.equal(batch.logprobs, batch.ref_logprobs)
    assert bool((batch.logprobs[mask] < 0).all())
    assert torch.equal(kl_k1(batch.logprobs, batch.ref_logprobs), torch.zeros_like(batch.logprobs))
    assert torch.equal(kl_k3(batch.logprobs, batch.ref_logprobs), torch.zeros_like(batch.logprobs))


def test_actor_logprobs_match_a_full_forward():
    """The response slice of the hidden states scores each response token from the state before it."""
    tok = tokenizer()
    policy = tiny_gpt()
    batch = sample(policy, tok)
    evaluate(ActorCritic(policy), copy.deepcopy(policy), batch)
    logits = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask)  # (B, P + N, V)
    p = batch.prompt_ids.shape[1]
    full = logits[:, p - 1 : -1].log_softmax(-1).gather(-1, batch.response_ids[..., None]).squeeze(-1)
    mask = batch.response_mask.bool()
    torch.testing.assert_close(batch.logprobs[mask], full[mask].detach(), rtol=1e-5, atol=1e-5)


def test_lora_policy_reference_is_the_base_with_adapters_disabled():
    tok = tokenizer()
    base = tiny_gpt()
    frozen = copy.deepcopy(base)
    policy = apply_lora(base, LoRAConfig(r=2, targets="q_proj,v_proj"))
    with torch.no_grad():  # move the adapters off their zero init so the policy differs from the base
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    batch = sample(policy, tok)
    ids, mask = batch.input_ids, batch.attention_mask
    with reference_of(policy, None) as ref:
        disabled = ref(input_ids=ids, attention_mask=mask)
        disabled_lp = response_logprobs(ref, batch)
    assert torch.equal(disabled, frozen(input_ids=ids, attention_mask=mask))
    assert torch.equal(disabled_lp, response_logprobs(frozen, batch))
    assert not torch.equal(policy(input_ids=ids, attention_mask=mask), disabled)  # adapters back on


def test_lora_ppo_keeps_no_second_copy_and_starts_at_kl_zero():
    tok = tokenizer()
    policy = apply_lora(tiny_gpt(), LoRAConfig(r=2, targets="q_proj,v_proj"))
    base = {k: v.clone() for k, v in policy.state_dict().items() if "base" in k}
    result = train_ppo(policy, PROMPTS, fraction_of_a, small_cfg(steps=2, lr=5e-2), tokenizer=tok)
    assert result.history[0]["kl"] == 0.0  # zero-init LoRA: the policy starts as its base
    after = policy.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())  # only adapters and value head train
    assert result.history[1]["kl"] != 0.0


@pytest.mark.parametrize("shared", [True, False])
def test_ppo_raises_the_reward_of_a_simple_rule(shared):
    """Reward = share of 'a' in the response. A wrong-signed update would drive it to 0 instead."""
    tok = tokenizer()
    critic = None if shared else reward_model(tiny_gpt(seed=1).backbone)
    cfg = small_cfg(steps=10, batch_size=16, minibatch_size=8, kl_coef=0.01)
    history = train_ppo(tiny_gpt(), PROMPTS, fraction_of_a, cfg, tokenizer=tok, critic=critic).history
    first = history[0]["reward"]
    last = sum(r["reward"] for r in history[-3:]) / 3
    assert first < 0.35 and last > first + 0.3, [round(r["reward"], 3) for r in history]
    assert history[-1]["entropy"] < history[0]["entropy"]
    assert history[-1]["kl"] > 0.1  # the policy moved away from the reference to get there


def test_k3_penalty_is_never_negative_and_missing_eos_is_penalized():
    """With a reward of 0 for everything, only the missing-EOS penalty moves the policy: towards stopping."""
    def eos_share(penalty: float) -> list[float]:
        cfg = small_cfg(steps=6, batch_size=16, minibatch_size=8, kl_estimator="k3",
                        missing_eos_penalty=penalty, max_new_tokens=2)
        zero = lambda p, r: [0.0] * len(r)  # noqa: E731
        history = train_ppo(tiny_gpt(), PROMPTS, zero, cfg, tokenizer=tokenizer()).history
        assert all(r["kl"] >= 0 for r in history)
        return [r["eos_fraction"] for r in history]

    penalized, free = eos_share(5.0), eos_share(0.0)
    assert penalized[0] == free[0] <= 0.5  # the same first rollout: 2 new tokens often do not reach EOS
    assert penalized[-1] > 0.8 and penalized[-1] > free[-1] + 0.5, (penalized, free)


def test_history_and_jsonl_log(tmp_path):
    tok = tokenizer()
    cfg = small_cfg(steps=2, out_dir=str(tmp_path))
    result = train_ppo(tiny_gpt(), PROMPTS, fraction_of_a, cfg, tokenizer=tok)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("reward", "kl", "entropy", "clip_fraction", "approx_kl", "value_error", "response_length"):
        assert key in rows[0]
    assert rows == json.loads(json.dumps(result.history))
    assert (tmp_path / "step-2" / "model.safetensors").is_file()


def run_to(tmp_path, kill_after: int | None, resume: bool, cfg_kw: dict, seed: int = 0):
    tok = tokenizer()
    cfg = small_cfg(out_dir=str(tmp_path), checkpoint_every=1, resume=resume, keep_last=0,
                    target_kl=0.5, kl_horizon=50, **cfg_kw)

    def log(row):
        if kill_after is not None and row["step"] == kill_after:
            raise KeyboardInterrupt  # killed after logging this step, before its checkpoint

    critic = reward_model(tiny_gpt(seed=1).backbone)
    return train_ppo(tiny_gpt(seed), PROMPTS, fraction_of_a, cfg, tokenizer=tok, critic=critic, log=log)


def test_killed_run_resumes_to_the_same_curve_bitwise(tmp_path):
    cfg_kw = dict(steps=4)
    straight = run_to(tmp_path / "straight", None, False, cfg_kw)
    with pytest.raises(KeyboardInterrupt):
        run_to(tmp_path / "killed", 3, False, cfg_kw)  # killed during step 3: checkpoints of steps 1-2 exist
    resumed = run_to(tmp_path / "killed", None, True, cfg_kw)
    assert [r["step"] for r in resumed.history] == [3, 4]

    def curve(rows):
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]

    assert curve(resumed.history) == curve(straight.history[2:])
    log_rows = [json.loads(line) for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert curve(log_rows) == curve(straight.history)
    a, b = straight.actor.state_dict(), resumed.actor.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history[-1]["kl_coef"] == straight.history[-1]["kl_coef"] != 0.05  # β adapted, restored


def test_prompt_order_covers_every_prompt_once_per_pass():
    order = [i for step in range(5) for i in prompt_order(6, step, 3, seed=1)]  # 15 draws: 2.5 passes
    assert sorted(order[:6]) == list(range(6)) and sorted(order[6:12]) == list(range(6))
    assert prompt_order(6, 2, 3, seed=1) == prompt_order(6, 2, 3, seed=1)


# ---- bad input --------------------------------------------------------------------------------------------


def test_reward_returning_the_wrong_number_of_scores():
    with pytest.raises(ConfigError, match=r"PPO step 1: the reward returned \(3,\) scores for 8 responses"):
        train_ppo(tiny_gpt(), PROMPTS, lambda p, r: [0.0, 1.0, 2.0], small_cfg(), tokenizer=tokenizer())


def test_nan_reward_stops_with_the_step_named():
    calls = []

    def reward(prompts, responses):
        calls.append(1)
        scores = [0.0] * len(responses)
        if len(calls) == 2:
            scores[5] = float("nan")
        return scores

    message = r"PPO step 2: the reward is nan for response 5 \(of 8\); stopping"
    with pytest.raises(TrainingError, match=message):
        train_ppo(tiny_gpt(), PROMPTS, reward, small_cfg(), tokenizer=tokenizer())


def test_reward_returning_text():
    with pytest.raises(ConfigError, match="PPO step 1: the reward returned list, not numbers"):
        train_ppo(tiny_gpt(), PROMPTS, lambda p, r: ["good"] * len(r), small_cfg(), tokenizer=tokenizer())


def test_tokenizer_without_eos():
    with pytest.raises(ConfigError, match="needs a tokenizer with an EOS token"):
        no_eos = CharTokenizer(list("abcd"))
        train_ppo(tiny_gpt(vocab=4), PROMPTS, fraction_of_a, small_cfg(), tokenizer=no_eos)


def test_prompt_that_leaves_no_room_for_the_response():
    with pytest.raises(ConfigError, match="prompt 1 has 22 tokens: with max_new_tokens=5 it exceeds"):
        train_ppo(tiny_gpt(), ["ab", "abcd" * 5 + "ab"], fraction_of_a, small_cfg(), tokenizer=tokenizer())


def test_reward_model_with_another_tokenizer():
    other = CharTokenizer(list("abcde"), {"eos": "|"})
    rm = reward_model(tiny_gpt(vocab=6).backbone)
    with pytest.raises(ConfigError, match="reward model's tokenizer differs from the policy's"):
        train_ppo(tiny_gpt(), PROMPTS, rm, small_cfg(), tokenizer=tokenizer(), reward_tokenizer=other)


def test_resume_needs_out_dir_and_a_used_out_dir_needs_resume(tmp_path):
    with pytest.raises(ConfigError, match="PPOConfig.resume=True needs out_dir"):
        train_ppo(tiny_gpt(), PROMPTS, fraction_of_a, small_cfg(resume=True), tokenizer=tokenizer())
    first = small_cfg(steps=1, out_dir=str(tmp_path))
    train_ppo(tiny_gpt(), PROMPTS, fraction_of_a, first, tokenizer=tokenizer())
    with pytest.raises(ConfigError, match="already holds a run; set resume=True to continue it"):
        train_ppo(tiny_gpt(), PROMPTS, fraction_of_a, small_cfg(steps=2, out_dir=str(tmp_path)),
                  tokenizer=tokenizer())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("step-")] == ["step-1"]  # nothing lost


def test_reward_model_with_another_tokenizer_through_text():
    """`reward_model_fn` scores the decoded texts re-encoded as the reward model's own records rows."""
    from plmkit.alignment.ppo import reward_model_fn
    from plmkit.alignment.records import tokenize_prompt_response
    from plmkit.alignment.reward import reward_scores

    other = CharTokenizer(list("edcba"), {"eos": "#"})  # other ids for the same letters
    rm = reward_model(tiny_gpt(seed=4, vocab=6).backbone)
    score = reward_model_fn(rm, other, batch_size=2)
    prompts, responses = ["ab", "cd", "abc"], ["a", "", "dcba"]
    expected = []
    for p, r in zip(prompts, responses):
        ids = torch.tensor([tokenize_prompt_response(other, p, r, max_length=24)["input_ids"]])
        expected.append(reward_scores(rm, ids, torch.ones_like(ids)).item())
    torch.testing.assert_close(score(prompts, responses), torch.tensor(expected), rtol=1e-5, atol=1e-5)
    history = train_ppo(tiny_gpt(), PROMPTS, score, small_cfg(steps=2), tokenizer=tokenizer()).history
    assert len(history) == 2


def test_bad_config_values():
    with pytest.raises(ConfigError, match=r"PPOConfig.minibatch_size=9: must be in \[1, batch_size\]"):
        PPOConfig(batch_size=8, minibatch_size=9)
    with pytest.raises(ConfigError, match="PPOConfig.kl_estimator='k2': must be k1 or k3"):
        PPOConfig(kl_estimator="k2")


def test_a_policy_without_adapters_is_not_its_own_reference():
    with pytest.raises(ConfigError, match="the policy has no adapters, so it cannot serve as its own"):
        with reference_of(tiny_gpt(), None):
            pass


def test_policy_that_is_not_a_decoder_lm():
    with pytest.raises(ConfigError, match=r"PPO needs a plmkit decoder TaskModel\(backbone, LMHead\)"):
        ActorCritic(reward_model(tiny_gpt().backbone))
