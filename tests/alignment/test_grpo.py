"""GRPO: advantages and losses on hand-worked numbers, parity with trl's GRPOTrainer, a tiny run that
learns a rule, resume, rule rewards and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from shared_paths import require_data
from tiny_alignment import EOS, PAD, hf_gpt2, hf_tokenizer, max_grad_difference, plmkit_twin

from plmkit.alignment.grpo import (
    GRPOConfig,
    answer_reward,
    combine_rewards,
    dapo_loss,
    dr_grpo_loss,
    format_reward,
    group_advantages,
    grpo_loss,
    grpo_token_loss,
    minibatch_loss,
    train_grpo,
)
from plmkit.alignment.ppo import Rollout, response_mask_from
from plmkit.data.tokenizer import CharTokenizer
from plmkit.errors import ConfigError, TrainingError
from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.peft import LoRAConfig, apply_lora

torch.set_num_threads(1)

PROMPTS = ["ab", "cd", "abc", "dcb", "b", "ca"]


# ---------------------------------------------------------------------------------------- golden numbers


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    # group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.577350; a group with one reward gets 0
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    scaled = group_advantages(rewards, 4)
    assert torch.allclose(
        scaled, torch.tensor([expected, -expected, -expected, expected, 0, 0, 0, 0]), atol=1e-6
    )
    assert abs(expected - 0.865876) < 1e-6
    unscaled = group_advantages(rewards, 4, scale=False)  # Dr. GRPO
    assert torch.equal(unscaled, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))


def _hand_batch():
    """Two responses, the second one token long. Ratios 1.5, 0.9 (A = +1), 0.5 (A = -1); ref/π = 1, 2, 0.5."""
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]])
    old = logprobs - torch.log(torch.tensor([[1.5, 0.9], [0.5, 1.0]]))
    ref = logprobs + torch.log(torch.tensor([[1.0, 2.0], [0.5, 1.0]]))
    mask = torch.tensor([[1, 1], [1, 0]])
    return logprobs, old, ref, torch.tensor([1.0, -1.0]), mask


def test_token_loss_and_the_three_averages_by_hand():
    logprobs, old, ref, advantages, mask = _hand_batch()
    token = grpo_token_loss(
        logprobs, old, ref, advantages, mask, clip_ratio=0.2, beta=0.1, kl_correction=False
    )
    # surrogate: -min(1.5, 1.2) = -1.2; -min(0.9, 0.9) = -0.9; A=-1: -min(-0.5, -0.8) = 0.8
    # k3 = e^d - d - 1 with d = log(ref/π): 0; 2 - ln 2 - 1 = 0.306853; 0.5 + ln 2 - 1 = 0.193147
    expected = torch.tensor([[-1.2, -0.9 + 0.0306853], [0.8 + 0.0193147, 0.0]])
    assert torch.allclose(token.loss * mask, expected, atol=1e-6)
    assert torch.allclose(token.kl * mask, torch.tensor([[0.0, 0.306853], [0.193147, 0.0]]), atol=1e-6)
    assert abs(float(token.clip_fraction) - 2 / 3) < 1e-6  # tokens 1 and 3 take the clipped term
    # GRPO: mean of per-response means ((-1.2 - 0.8693147) / 2 and 0.8193147); DAPO: -1.25 / 3 tokens;
    # Dr. GRPO: -1.25 / (2 responses * 4 max new tokens)
    assert abs(float(grpo_loss(token.loss, mask)) - (-1.0346574 + 0.8193147) / 2) < 1e-6
    assert abs(float(dapo_loss(token.loss, mask)) - (-1.25 / 3)) < 1e-6
    assert abs(float(dr_grpo_loss(token.loss, mask, 4)) - (-1.25 / 8)) < 1e-6
    # with the ratio weighting (trl's default) each k3 term is multiplied by ρ = 1.5, 0.9, 0.5
    corrected = grpo_token_loss(logprobs, old, ref, advantages, mask, clip_ratio=0.2, beta=0.1)
    expected = torch.tensor([[-1.2, -0.9 + 0.1 * 0.306853 * 0.9], [0.8 + 0.1 * 0.193147 * 0.5, 0.0]])
    assert torch.allclose(corrected.loss * mask, expected, atol=1e-6)


def test_at_the_old_policy_the_loss_is_minus_the_mean_advantage():
    logprobs, _, _, _, mask = _hand_batch()
    advantages = torch.tensor([0.7, -0.3])
    token = grpo_token_loss(logprobs, logprobs, None, advantages, mask, beta=0.0)
    assert abs(float(grpo_loss(token.loss, mask)) - (-(0.7 - 0.3) / 2)) < 1e-7
    assert float(token.clip_fraction) == 0.0


# -------------------------------------------------------------------------------------- parity with trl


def _trl_trainer(
    model_dir, tmp_path, loss_type: str, beta: float, temperature: float, n: int, correction: bool
):
    from datasets import Dataset
    from trl import GRPOConfig as TrlConfig
    from trl import GRPOTrainer

    args = TrlConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=n,
        beta=beta,
        epsilon=0.2,
        temperature=temperature,
        loss_type=loss_type,
        report_to=[],
        use_cpu=True,
        logging_steps=1,
        disable_dropout=True,
        use_bias_correction_kl=correction,
    )
    data = Dataset.from_dict({"prompt": ["w1 w2 w3", "w4 w5 w6"]})
    trainer = GRPOTrainer(
        model=str(model_dir),
        reward_funcs=lambda prompts, completions, **_: [0.0] * len(prompts),
        args=args,
        train_dataset=data,
        processing_class=hf_tokenizer(),
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1

    def plain_logprobs(model, input_ids, attention_mask, logits_to_keep, **_):
        # trl 1.16 scores through a fused tile kernel whose CPU fallback differs from a plain fp32 log-softmax
        # by up to 1e-3 (measured); its math is the same, so read the model's own logits, as trl 0.x did.
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -logits_to_keep - 1 : -1]
        logps = (logits / temperature).log_softmax(-1)
        entropies = -(logps.exp() * logps).sum(-1).detach()  # logged only
        return logps.gather(-1, input_ids[:, -logits_to_keep:, None]).squeeze(-1), entropies, None

    trainer._get_per_token_logps_and_entropies = plain_logprobs
    return trainer


@pytest.mark.parametrize(
    ("loss_type", "correction"), [("grpo", True), ("dapo", True), ("dr_grpo", True), ("grpo", False)]
)
def test_loss_and_gradients_equal_trl_grpo_trainer(tmp_path, loss_type, correction):
    """trl's GRPOTrainer._compute_loss (its clipping, k3 KL and the three averages) on a hand-built batch, the
    log-probs read from the model's plain logits (see `_trl_trainer`). Prompts have one length: transformers'
    GPT-2 takes positions from the cache, plmkit from the mask, and they agree without left padding."""
    model_dir = tmp_path / "model"
    hf = hf_gpt2()
    hf.save_pretrained(model_dir, safe_serialization=True)
    hf_tokenizer().save_pretrained(model_dir)
    ours = plmkit_twin(hf, tmp_path / "twin")
    b, p, n, temperature, beta = 8, 3, 6, 0.7, 0.1
    trainer = _trl_trainer(model_dir, tmp_path, loss_type, beta, temperature, n, correction)
    g = torch.Generator().manual_seed(3)
    prompt_ids = torch.randint(0, EOS, (b, p), generator=g)
    completion_ids = torch.randint(0, EOS, (b, n), generator=g)
    for row, length in enumerate([6, 3, 1, 6, 4, 2, 6, 5]):
        if length < n:
            completion_ids[row, length - 1] = EOS
            completion_ids[row, length:] = PAD
    completion_mask, has_eos = response_mask_from(completion_ids, EOS)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0, 1.0, 0.0, 0.25])
    advantages = group_advantages(rewards, 4)
    batch = Rollout(
        ["p"] * b, prompt_ids, torch.ones(b, p, dtype=torch.long), completion_ids, completion_mask, has_eos
    )
    from plmkit.alignment.ppo import response_logprobs

    current = response_logprobs(ours, batch, temperature)
    # old and reference log-probs off the current ones, so that ratios leave the clip range both ways
    old = (current + 0.4 * torch.randn(b, n, generator=g)) * completion_mask
    ref = (current + 0.3 * torch.randn(b, n, generator=g)) * completion_mask
    batch.logprobs, batch.ref_logprobs = old, ref
    cfg = GRPOConfig(
        group_size=4,
        prompts_per_step=2,
        max_new_tokens=n,
        temperature=temperature,
        beta=beta,
        clip_ratio=0.2,
        loss_type=loss_type,
        kl_correction=correction,
    )
    loss, metrics = minibatch_loss(ours, batch, advantages, cfg)
    loss.backward()
    inputs = {
        "prompt_ids": prompt_ids,
        "prompt_mask": torch.ones(b, p, dtype=torch.long),
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": completion_mask.sum(),
    }
    theirs = trainer._compute_loss(trainer.model, inputs)
    theirs.backward()
    assert 0.0 < metrics["clip_fraction"] < 1.0  # the clip is exercised
    assert abs(loss.item() - theirs.item()) < 1e-6, (loss.item(), theirs.item())
    assert max_grad_difference(ours, trainer.model) < 1e-6


# ------------------------------------------------------------------------------------------ tiny runs


def tokenizer() -> CharTokenizer:
    return CharTokenizer(list("abcd"), {"eos": "|"})


def tiny_gpt(seed: int = 0):
    torch.manual_seed(seed)
    return gpt2_lm(GPT2Config(vocab_size=5, max_positions=24, d_model=16, num_layers=1, num_heads=2))


def fraction_of_a(prompts: list[str], responses: list[str]) -> list[float]:
    return [r.count("a") / max(len(r), 1) for r in responses]


def small_cfg(**kw) -> GRPOConfig:
    base = dict(steps=3, prompts_per_step=4, group_size=4, max_new_tokens=5, lr=1e-2, beta=0.04)
    return GRPOConfig(**{**base, **kw})


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo"])
def test_grpo_raises_the_reward_of_a_simple_rule(loss_type):
    """Reward = share of 'a' in the response. A wrong-signed update would drive it towards 0 instead."""
    cfg = small_cfg(steps=12, group_size=8, lr=2e-2, loss_type=loss_type, scale_rewards=loss_type == "grpo")
    history = train_grpo(tiny_gpt(), PROMPTS, fraction_of_a, cfg, tokenizer=tokenizer()).history
    first = sum(r["reward"] for r in history[:2]) / 2
    last = sum(r["reward"] for r in history[-3:]) / 3
    assert first < 0.35 and last > first + 0.3, [round(r["reward"], 3) for r in history]
    assert history[-1]["kl"] > 0.0


def test_minibatches_and_epochs_take_one_step_each():
    cfg = small_cfg(steps=2, minibatch_size=4, epochs=2, schedule="linear")
    history = train_grpo(tiny_gpt(), PROMPTS, fraction_of_a, cfg, tokenizer=tokenizer()).history
    # 16 responses in minibatches of 4, twice: 8 optimizer steps per GRPO step, 16 in all, linear to 0
    assert abs(history[0]["lr"] - cfg.lr * (1 - 8 / 15)) < 1e-9
    assert history[1]["lr"] == 0.0
    assert all(r["grad_norm"] > 0 for r in history)


def test_lora_policy_uses_its_base_as_reference():
    policy = apply_lora(tiny_gpt(), LoRAConfig(r=2, targets="q_proj,v_proj"))
    base = {k: v.clone() for k, v in policy.state_dict().items() if "base" in k}
    history = train_grpo(policy, PROMPTS, fraction_of_a, small_cfg(lr=5e-2), tokenizer=tokenizer()).history
    assert history[0]["kl"] == 0.0  # zero-init LoRA: the policy starts as its base
    assert history[-1]["kl"] != 0.0
    after = policy.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())  # only the adapters train


def test_resume_continues_the_same_run(tmp_path):
    straight = train_grpo(
        tiny_gpt(), PROMPTS, fraction_of_a, small_cfg(steps=4), tokenizer=tokenizer()
    ).history
    out = str(tmp_path / "run")
    train_grpo(tiny_gpt(), PROMPTS, fraction_of_a, small_cfg(steps=2, out_dir=out), tokenizer=tokenizer())
    resumed = train_grpo(
        tiny_gpt(),
        PROMPTS,
        fraction_of_a,
        small_cfg(steps=4, out_dir=out, resume=True),
        tokenizer=tokenizer(),
    ).history
    keys = ("reward", "loss", "kl", "response_length")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight[2:]]
    assert (tmp_path / "run" / "step-4").is_dir()


# ------------------------------------------------------------------------------------------ rule rewards


def test_answer_and_format_rewards():
    prompts = ["Q1", "Q1", "Q1", "Q2"]
    references = {"Q1": "48 / 2 = 24 clips in May.\n48 + 24 = 72 altogether.\n#### 72", "Q2": "1,200"}
    responses = ["48+24=72\n#### 72", "#### 71", "So the answer is 72.", "It costs $1200.00"]
    assert answer_reward(references)(prompts, responses) == [1.0, 0.0, 1.0, 1.0]
    assert format_reward(prompts, responses) == [1.0, 1.0, 0.0, 0.0]
    both = combine_rewards({"answer": answer_reward(references), "format": format_reward}, {"format": 0.5})
    assert both(prompts, responses).tolist() == [1.5, 0.5, 1.0, 1.0]
    assert both.parts["format"].tolist() == [1.0, 1.0, 0.0, 0.0]


# -------------------------------------------------------------------------------------------- bad input


def test_a_reward_with_the_wrong_number_of_scores_is_named():
    def short(prompts, responses):
        return [1.0] * (len(responses) - 1)

    with pytest.raises(ConfigError, match=r"reward 'short_one'.*\(15,\) scores for 16 responses"):
        train_grpo(
            tiny_gpt(), PROMPTS, combine_rewards({"short_one": short}), small_cfg(), tokenizer=tokenizer()
        )
    with pytest.raises(ConfigError, match=r"GRPO step 1: .*one score per response"):
        train_grpo(tiny_gpt(), PROMPTS, short, small_cfg(), tokenizer=tokenizer())


def test_a_nan_reward_stops_with_the_step_named():
    def nan_reward(prompts, responses):
        return [float("nan")] * len(responses)

    with pytest.raises(TrainingError, match="GRPO step 1: the reward is nan"):
        train_grpo(tiny_gpt(), PROMPTS, nan_reward, small_cfg(), tokenizer=tokenizer())


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="group_size=1.*no baseline"):
        GRPOConfig(group_size=1)
    with pytest.raises(ConfigError, match="loss_type='ppo'"):
        GRPOConfig(loss_type="ppo")
    with pytest.raises(ConfigError, match="do not split into groups of 4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ConfigError, match="no reference answer for prompt 'Q9'"):
        answer_reward({"Q1": "1"})(["Q9"], ["#### 1"])
    with pytest.raises(ConfigError, match="EOS"):
        train_grpo(tiny_gpt(), PROMPTS, fraction_of_a, small_cfg(), tokenizer=CharTokenizer(list("abcd")))


# ------------------------------------------------------------------------------------------ the command


def test_gsm8k_reference_solutions_earn_both_rewards():
    """On the real GSM8K rows, each reference solution scores 1 under the answer and the format rewards, and a
    solution with its final number changed scores 0 for the answer."""
    import json

    from plmkit.recipes.grpo import Config, read_problems

    path = require_data("gsm8k", "train.jsonl")
    template = "Question: {prompt}\\nAnswer:"  # as a shell passes it: a backslash and an n
    cfg = Config(
        policy="unused",
        prompts=str(path),
        prompt_field="question",
        out_dir="unused",
        max_prompts=50,
        template=template,
    )
    prompts, references = read_problems(cfg)
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert prompts[0] == "Question: " + first["question"] + "\nAnswer:"
    solutions = [references[p] for p in prompts]
    assert answer_reward(references)(prompts, solutions) == [1.0] * 50
    assert format_reward(prompts, solutions) == [1.0] * 50
    wrong = [s + "1" for s in solutions]  # "#### 72" -> "#### 721"
    assert answer_reward(references)(prompts, wrong) == [0.0] * 50


def test_grpo_command_trains_and_saves(tmp_path, capsys):
    import json

    from plmkit.cli import main
    from plmkit.interop.hf import load, save_hf

    tok = CharTokenizer(list("0123456789+=# "), {"eos": "|"})
    torch.manual_seed(0)
    model = gpt2_lm(
        GPT2Config(vocab_size=tok.vocab_size, max_positions=32, d_model=16, num_layers=1, num_heads=2)
    )
    policy = save_hf(model, tmp_path / "policy", tokenizer=tok)
    data = tmp_path / "problems.jsonl"
    rows = [{"question": "1+1=", "answer": "1+1=2\n#### 2"}, {"question": "2+3=", "answer": "#### 5"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    args = [
        "grpo",
        f"--policy={policy}",
        f"--prompts={data}",
        "--prompt_field=question",
        f"--out_dir={out}",
        "--rewards=answer,format",
        "--reward_weights=1,0.5",
        "--grpo.steps=2",
        "--grpo.group_size=4",
        "--grpo.prompts_per_step=2",
        "--grpo.max_new_tokens=6",
        "--grpo.lr=1e-3",
    ]
    assert main(args) == 0, capsys.readouterr().err
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert (
        [m["step"] for m in metrics] == [1, 2]
        and "reward/answer" in metrics[0]
        and "reward/format" in metrics[0]
    )
    report = json.loads((out / "grpo_report.json").read_text())
    assert report["steps"] == 2 and (out / "step-2").is_dir()
    assert load(out / "model").model.config.vocab_size == tok.vocab_size
    lora = [
        *[a for a in args if not a.startswith("--out_dir")],
        f"--out_dir={tmp_path / 'lora'}",
        "--peft",
        "lora",
        "--peft.targets=q_proj,v_proj",
    ]
    assert main(lora) == 0, capsys.readouterr().err
    assert (tmp_path / "lora" / "adapter").is_dir() and not (tmp_path / "lora" / "model").exists()
    capsys.readouterr()
    assert main([*args[:5], "--rewards=answer,typo"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--rewards=answer,typo" in err
