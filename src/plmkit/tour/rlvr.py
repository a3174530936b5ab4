"""m. RL from verifiable rewards: GRPO on the word problems of i, rewarded for the right final answer."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from plmkit import generate
from plmkit.alignment.grpo import GRPOConfig, answer_reward, train_grpo
from plmkit.alignment.ppo import RewardFn
from plmkit.data.tokenizer import Tokenizer
from plmkit.prompting import extract_answer
from plmkit.tour.common import Context, Result, figure_png, majority_baseline, new_figure, table
from plmkit.tour.cot import MAX_NEW, WORKED, cot_model, prompt
from plmkit.world import make_task

NAME = "rlvr"
TITLE = "m. RL from verifiable rewards: GRPO on the word problems of i"
CLAIM = (
    "Reinforcement learning against a rule that only checks the final answer (GRPO: no reward model, no "
    "value model) raises the greedy accuracy of the supervised chain-of-thought model on unseen multi-step "
    "problems."
)
# Thresholds fixed before measuring: greedy accuracy on the 2-4-step test problems more than 5 points
# above i's model it starts from (the standard error of one accuracy on 150 problems is about 4 points).
MARGIN = 0.05
FULL_STEPS, QUICK_STEPS = 60, 2
PROMPTS_PER_STEP, GROUP = 8, 8
LR = 1e-4
BETA = 0.04
TEMPERATURE = 1.0
SAMPLED_DRAWS = 2


def problem_reward(records: list[dict]) -> tuple[list[str], RewardFn]:
    """The GRPO prompts (i's worked-solution prompt of every 2-4-step problem) and the verifiable reward:
    1 when the response's final answer (extract_answer) is the problem's result, else 0."""
    kept = [r for r in records if r["steps"] >= 2]
    prompts = [prompt(r, WORKED) for r in kept]
    return prompts, answer_reward([str(r["result"]) for r in kept], prompts)


@torch.no_grad()
def solutions(
    model: nn.Module, tok: Tokenizer, records: list[dict], generator: torch.Generator | None = None
) -> tuple[list[str | None], list[int]]:
    """Worked solutions of `records`, greedy or (with a generator) sampled at TEMPERATURE: (final answers
    read by extract_answer, response lengths in tokens up to the end of text)."""
    eos = tok.eos_id
    prompts = [tok.encode(prompt(r, WORKED), add_special_tokens=False) for r in records]
    new = generate(
        model, prompts, max_new_tokens=MAX_NEW, eos_token_id=eos, pad_token_id=eos,
        do_sample=generator is not None, temperature=TEMPERATURE, generator=generator,
    )
    answers, lengths = [], []
    for row in new.tolist():
        ids = row[: row.index(eos)] if eos in row else row
        answers.append(extract_answer(tok.decode(ids)))
        lengths.append(len(ids))
    return answers, lengths


def sampled_accuracy(
    model: nn.Module, tok: Tokenizer, test: list[dict], gold: list[str], ctx: Context
) -> float:
    """Accuracy of one solution sampled at TEMPERATURE, averaged over SAMPLED_DRAWS draws (the same draws
    before and after GRPO): what GRPO's own samples score on unseen problems."""
    gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed + 11)
    right = 0
    for _ in range(SAMPLED_DRAWS):
        answers, _ = solutions(model, tok, test, gen)
        right += sum(a == g for a, g in zip(answers, gold))
    return right / (SAMPLED_DRAWS * len(test))


def run(ctx: Context) -> Result:
    built = cot_model(ctx)  # i's model (trained by i when it ran first in this Context)
    tok = built.tok
    test = [r for r in make_task(ctx.world, "arithmetic", "test") if r["steps"] >= 2][: ctx.steps(150, 50)]
    gold = [str(r["result"]) for r in test]
    prompts, reward = problem_reward(built.train_set)

    before, before_len = solutions(built.model, tok, test)
    before_sampled = sampled_accuracy(built.model, tok, test, gold, ctx)
    policy = copy.deepcopy(built.model)  # i's model stays as it is: it is the reference and the baseline
    steps = ctx.steps(FULL_STEPS, QUICK_STEPS)
    cfg = GRPOConfig(
        steps=steps, prompts_per_step=PROMPTS_PER_STEP, group_size=GROUP, max_new_tokens=MAX_NEW, lr=LR,
        beta=BETA, temperature=TEMPERATURE, seed=ctx.seed,
    )
    start = time.perf_counter()
    trained = train_grpo(
        policy, prompts, reward, cfg, tokenizer=tok, reference=built.model,
        format_prompt=lambda text: tok.encode(text, add_special_tokens=False),
    )
    grpo_seconds = time.perf_counter() - start
    policy.eval()
    after, after_len = solutions(policy, tok, test)
    after_sampled = sampled_accuracy(policy, tok, test, gold, ctx)

    def acc(pred: list[str | None], rows: list[int]) -> float:
        return sum(pred[i] == gold[i] for i in rows) / max(1, len(rows))

    def mean(values: list[int], rows: list[int]) -> float:
        return sum(values[i] for i in rows) / max(1, len(rows))

    everything = list(range(len(test)))
    by_steps: dict[int, dict[str, Any]] = {}
    for n in sorted({r["steps"] for r in test}):
        rows = [i for i, r in enumerate(test) if r["steps"] == n]
        by_steps[n] = {
            "n": len(rows),
            "before": acc(before, rows),
            "after": acc(after, rows),
            "length_before": mean(before_len, rows),
            "length_after": mean(after_len, rows),
            "baseline": majority_baseline([gold[i] for i in rows]),
        }
    scores = {"before": acc(before, everything), "after": acc(after, everything)}
    lengths = {"before": mean(before_len, everything), "after": mean(after_len, everything)}
    baseline = majority_baseline(gold)
    history = trained.history
    curve = [(row["step"], row["reward"], row["response_length"]) for row in history]
    window = max(1, min(5, len(curve) // 2))
    reward_start = sum(c[1] for c in curve[:window]) / window
    reward_end = sum(c[1] for c in curve[-window:]) / window
    supported = scores["after"] > scores["before"] + MARGIN

    fig, ax = new_figure()
    ns = list(by_steps)
    width = 0.38
    ax.bar([n - width / 2 for n in ns], [by_steps[n]["before"] for n in ns], width, label="i's CoT model")
    after_label = f"after {steps} GRPO steps"
    ax.bar([n + width / 2 for n in ns], [by_steps[n]["after"] for n in ns], width, label=after_label)
    ax.axhline(baseline, color="grey", linestyle="--", label=f"most common answer {baseline:.2f}")
    ax.set_xticks(ns)
    ax.set_xlabel("steps in the problem")
    ax.set_ylabel("greedy accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Verifiable reward (the final answer): before and after GRPO")
    ax.legend()
    accuracy_png = figure_png(fig)
    fig, ax = new_figure()
    ax.plot([c[0] for c in curve], [c[1] for c in curve], marker=".", label="mean reward of the samples")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("share of sampled answers right")
    ax.set_ylim(0, 1)
    twin = ax.twinx()
    twin.plot([c[0] for c in curve], [c[2] for c in curve], color="#c44e52", linestyle=":", label="length")
    twin.set_ylabel("sampled response length (tokens)")
    ax.legend(loc="lower right")
    ax.set_title(f"GRPO: {PROMPTS_PER_STEP} problems x {GROUP} samples per step")
    curve_png = figure_png(fig)

    kl = [row["kl"] for row in history if "kl" in row]
    return Result(
        NAME,
        TITLE,
        CLAIM,
        setup=f"i's chain-of-thought GPT (trained {built.steps} steps on worked and direct solutions) is the "
        f"starting policy and the KL reference. GRPO (plmkit.alignment.grpo.train_grpo) for {steps} steps: "
        f"{PROMPTS_PER_STEP} training problems of 2-4 steps per step, {GROUP} solutions sampled per problem "
        f"at temperature {TEMPERATURE} (up to {MAX_NEW} tokens), reward 1 when the final answer "
        "(extract_answer) equals the problem's result and 0 otherwise (answer_reward), group-normalized "
        "advantages, clipped ratio, "
        f"k3 KL to i's model with beta {BETA}, lr {LR} ({grpo_seconds:.0f}s). Evaluated greedily on the same "
        f"{len(test)} unseen 2-4-step problems as i.",
        result=f"greedy accuracy {scores['before']:.0%} before (i's model) and {scores['after']:.0%} "
        f"after GRPO (most common answer {baseline:.0%}); mean reward of the sampled solutions "
        f"{reward_start:.2f} in the first steps, {reward_end:.2f} in the last; greedy solutions "
        f"{lengths['before']:.1f} tokens long before, {lengths['after']:.1f} after; one solution sampled at "
        f"temperature {TEMPERATURE} right {before_sampled:.0%} before, {after_sampled:.0%} after.",
        supported=supported,
        key=f"greedy accuracy {scores['before']:.0%} -> {scores['after']:.0%} after GRPO; one sample "
        f"{before_sampled:.0%} -> {after_sampled:.0%}",
        metrics={
            "greedy_before": scores["before"],
            "greedy_after": scores["after"],
            "gain": scores["after"] - scores["before"],
            "margin": MARGIN,
            "sampled_before": before_sampled,
            "sampled_after": after_sampled,
            "length_before": lengths["before"],
            "length_after": lengths["after"],
            "majority_baseline": baseline,
            "by_steps": by_steps,
            "reward_first_steps": reward_start,
            "reward_last_steps": reward_end,
            "reward_curve": [c[1] for c in curve],
            "length_curve": [c[2] for c in curve],
            "kl_last": kl[-1] if kl else float("nan"),
            "grpo_steps": steps,
            "grpo_seconds": grpo_seconds,
        },
        tables=[
            table(
                ["steps", "problems", "most common answer", "i's CoT model", "after GRPO",
                 "length before", "length after"],
                [
                    [n, v["n"], v["baseline"], v["before"], v["after"], v["length_before"], v["length_after"]]
                    for n, v in by_steps.items()
                ],
            )
        ],
        plots={"rlvr": accuracy_png, "rlvr_reward": curve_png},
    )
