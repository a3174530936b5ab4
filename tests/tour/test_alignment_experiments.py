"""The tour's alignment experiments: k (RLHF) and m (GRPO on i's word problems), on tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plmkit.alignment.grpo import GRPOConfig, train_grpo
from plmkit.alignment.policy_eval import sample_with_kl
from plmkit.data.tokenizer import CharTokenizer
from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.tour import rlhf, rlvr
from plmkit.tour.common import Context
from plmkit.tour.cot import WORKED, CotModel, problem_tokenizer, prompt, worked_solution
from plmkit.world import World, make_task


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_gpt(vocab: int, seed: int = 0, positions: int = 128):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, max_positions=positions, d_model=32, num_layers=1, num_heads=2)
    return gpt2_lm(config)


# ------------------------------------------------------------------------------------------------- m


def test_m_rewards_the_right_final_answer_of_a_worked_solution():
    records = make_task(World(0), "arithmetic", "dev", 60)
    prompts, reward = rlvr.problem_reward(records)
    kept = [r for r in records if r["steps"] >= 2]
    assert prompts == [prompt(r, WORKED) for r in kept] and len(kept) < len(records)  # 1-step ones left out
    right = [" " + worked_solution(r) for r in kept]
    wrong = [s.rsplit("#### ", 1)[0] + f"#### {r['result'] + 1}" for s, r in zip(right, kept)]
    assert reward(prompts, right) == [1.0] * len(kept)
    assert reward(prompts, wrong) == [0.0] * len(kept)


def test_grpo_with_the_answer_reward_raises_it_on_a_tiny_case():
    """m's reward on two tiny 'problems' whose answers a 1-layer model can learn in a few GRPO steps;
    an update of the wrong sign would lower the share of right answers instead."""
    records = [
        {"question": "a", "steps": 2, "result": 1},
        {"question": "b", "steps": 3, "result": 2},
    ]
    prompts, reward = rlvr.problem_reward(records)
    tok = CharTokenizer(sorted(set("".join(prompts)) | set("0123 ")), {"eos": "|"})
    model = tiny_gpt(tok.vocab_size, positions=32)
    # One new token: the answer digit or not (1 in 20 at random), so some groups differ from the start.
    cfg = GRPOConfig(steps=8, prompts_per_step=2, group_size=16, max_new_tokens=1, lr=5e-2, beta=0.04)
    history = train_grpo(
        model, prompts, reward, cfg, tokenizer=tok,
        format_prompt=lambda text: tok.encode(text, add_special_tokens=False),
    ).history
    first = sum(r["reward"] for r in history[:3]) / 3
    last = sum(r["reward"] for r in history[-3:]) / 3
    assert last > first + 0.25, [round(r["reward"], 2) for r in history]


def test_m_runs_on_a_tiny_model_and_its_verdict_is_the_threshold(tmp_path):
    ctx = Context(seed=0, quick=True, work=Path(tmp_path), log=lambda m: None)
    train_set = make_task(ctx.world, "arithmetic", "train", 300)
    tok = problem_tokenizer(ctx, train_set)
    ctx.cache["cot_model"] = CotModel(tiny_gpt(tok.vocab_size).eval(), tok, train_set, 0, 0.0, [], [])
    result = rlvr.run(ctx)
    m = result.metrics
    assert result.supported == (m["greedy_after"] > m["greedy_before"] + rlvr.MARGIN)
    assert m["grpo_steps"] == rlvr.QUICK_STEPS == len(m["reward_curve"]) == len(m["length_curve"])
    assert set(m["by_steps"]) <= {2, 3, 4} and sum(v["n"] for v in m["by_steps"].values()) == 50
    assert 0 < m["length_before"] <= rlvr.MAX_NEW  # a random model rambles, but no further than the cap
    assert set(result.plots) == {"rlvr", "rlvr_reward"}
    assert all(png.startswith(b"\x89PNG") for png in result.plots.values())
    # i's model itself is not trained by m: it stays the baseline and the reference
    assert all(p.grad is None for p in ctx.cache["cot_model"].model.parameters())


# ------------------------------------------------------------------------------------------------- k


def test_sample_with_kl_is_the_log_ratio_of_the_sampled_tokens():
    tok = CharTokenizer(list("abcd"), {"eos": "|"})
    policy, reference = tiny_gpt(tok.vocab_size, 0, 16), tiny_gpt(tok.vocab_size, 1, 16)
    prompts = ["ab", "cd", "a", "dcb"] * 8
    encode = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    batch, kl = sample_with_kl(policy, policy, prompts, tokenizer=tok, max_new_tokens=1, generator=gen,
                               format_prompt=encode)
    assert torch.equal(kl, torch.zeros(len(prompts)))  # a policy has no KL to itself
    gen = torch.Generator().manual_seed(0)
    batch, kl = sample_with_kl(policy, reference, prompts, tokenizer=tok, max_new_tokens=1, generator=gen,
                               format_prompt=encode)
    with torch.no_grad():  # one token per response: the estimate is log p(y) - log q(y) of that token
        expected = []
        for p, y in zip(prompts, batch.response_ids[:, 0].tolist()):
            ids = torch.tensor([encode(p)])
            logp = policy(ids)[0, -1].log_softmax(-1)[y] - reference(ids)[0, -1].log_softmax(-1)[y]
            expected.append(float(logp))
    assert kl.tolist() == pytest.approx(expected, abs=1e-5)


def _points(**judges: float) -> dict:
    base = {"pretrained": (0.9, 0.0, 30.0), "sft": (1.3, 0.95, 0.0), "ppo": (1.6, 0.95, 0.7),
            "dpo": (1.5, 0.95, 0.8)}
    out = {k: {"judge": j, "format": f, "kl": kl} for k, (j, f, kl) in base.items()}
    for k, v in judges.items():
        out[k]["judge"] = v
    return out


def test_k_verdict_checks_every_sentence_of_the_claim():
    best = {"n": rlhf.BEST_OF, "judge": 1.5}
    parts = rlhf.verdict_parts(_points(), 0.7, best)
    assert list(parts) == [
        "pretrained_does_not_follow", "sft_teaches_format", "reward_model_learns_preferences",
        "reward_model_steers", "ppo_improves", "ppo_stays_near_sft", "dpo_improves", "dpo_gets_there",
    ]
    assert all(parts.values())
    # Each threshold, just on the wrong side, fails its own part and only it.
    sft = 1.3
    cases = {
        "reward_model_learns_preferences": (_points(), rlhf.REWARD_ACCURACY_MIN, best),
        "reward_model_steers": (_points(), 0.7, {**best, "judge": sft + rlhf.GAIN}),
        "ppo_improves": (_points(ppo=sft + rlhf.GAIN, dpo=sft + rlhf.GAIN + 0.01), 0.7, best),
        "dpo_gets_there": (_points(dpo=1.6 - rlhf.DPO_BEHIND_PPO - 0.01), 0.7, best),
    }
    for name, args in cases.items():
        failed = [k for k, ok in rlhf.verdict_parts(*args).items() if not ok]
        assert failed == [name], (name, failed)
    far = _points()
    far["ppo"]["kl"] = rlhf.KL_MAX
    assert [k for k, ok in rlhf.verdict_parts(far, 0.7, best).items() if not ok] == ["ppo_stays_near_sft"]
    unformatted = _points()
    unformatted["sft"]["format"] = rlhf.FORMAT_SFT_MIN
    assert not rlhf.verdict_parts(unformatted, 0.7, best)["sft_teaches_format"]
    assert rlhf.best_of_point([{"n": 2}, {"n": rlhf.BEST_OF}, {"n": 8}])["n"] == rlhf.BEST_OF
    assert rlhf.best_of_point([{"n": 2}])["n"] == 2


def test_k_runs_on_a_tiny_pretrained_model(tmp_path):
    ctx = Context(seed=0, quick=True, work=Path(tmp_path), log=lambda m: None)
    tok = ctx.bpe()
    ctx.cache["gpt"] = (tiny_gpt(tok.vocab_size, positions=192).eval(), {})
    result = rlhf.run(ctx)
    m = result.metrics
    assert result.supported == all(m["parts"].values())
    assert set(m["policies"]) == {"pretrained", "sft", "ppo", "dpo"}
    assert m["policies"]["sft"]["kl"] == 0.0  # SFT is the KL reference
    for p in m["policies"].values():
        assert 0.0 <= p["judge"] <= 3.0 and 0.0 <= p["format"] <= 1.0
    assert 0.0 <= m["reward_model_dev_accuracy"] <= 1.0
    assert [b["n"] for b in m["best_of_n"]] == list(rlhf.QUICK.best_of)
    start = {k: v for k, v in m["ppo_curve"][0].items() if k != "step"}
    assert start == m["policies"]["sft"] and m["ppo_curve"][-1] == m["policies"]["ppo"]
    assert result.plots["rlhf"].startswith(b"\x89PNG")
    assert "pretrained" in result.tables[0] and "DPO" in result.tables[0]
