"""k. RLHF: SFT, a reward model from preferences, best-of-n, PPO and DPO, judged by the world's labeller."""

from __future__ import annotations

import copy
import re
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from plmkit.alignment.best_of_n import best_of_n, best_of_n_kl
from plmkit.alignment.dpo import PreferenceConfig, preference_step
from plmkit.alignment.policy_eval import sample_with_kl
from plmkit.alignment.ppo import PPOConfig, score_rollout, train_ppo
from plmkit.alignment.records import (
    collate_preferences,
    collate_prompt_responses,
    encode_preferences,
    encode_prompt_responses,
)
from plmkit.alignment.reward import encode_reward_pairs, evaluate_pairs, reward_model, reward_step
from plmkit.alignment.sft import sft_step
from plmkit.data.batches import ShuffledBatches
from plmkit.data.records import PreferencePair, PromptCompletion
from plmkit.tour.common import Context, Result, figure_png, new_figure, table, train_config
from plmkit.training import train
from plmkit.world import judge, make_task

NAME = "rlhf"
TITLE = "k. RLHF: SFT, a reward model, best-of-n, PPO and DPO"
CLAIM = (
    "A pretrained model predicts text but does not follow instructions; SFT teaches the format, a reward "
    "model learned from preferences steers it, PPO improves it while staying near the SFT model, and DPO "
    "gets there without a reward model."
)


@dataclass(frozen=True)
class Sizes:
    sft_steps: int
    reward_steps: int
    ppo_steps: int
    ppo_batch: int
    dpo_steps: int
    eval_prompts: int
    best_of: tuple[int, ...]
    curve_points: int = 2  # evaluations along PPO and DPO after their start


FULL = Sizes(sft_steps=200, reward_steps=100, ppo_steps=20, ppo_batch=32, dpo_steps=100, eval_prompts=200,
             best_of=(2, 4, 8))
QUICK = Sizes(sft_steps=20, reward_steps=10, ppo_steps=2, ppo_batch=8, dpo_steps=6, eval_prompts=24,
              best_of=(2,), curve_points=1)
# The world BPE spends 14-26 tokens on an answer (with its end of text), so responses get 28.
BATCH, MAX_LENGTH, MAX_NEW = 32, 56, 28
SFT_LR, REWARD_LR = 2e-3, 1e-3
# bench/rlhf_world.py's beta, at a third of its rates: on b's wider GPT (seed 0) lr 1e-4 drove PPO to KL
# 1.9 and DPO to 2.6 in 20 / 100 steps, trading correct answers (28% -> 12% / 18%) for the politeness the
# reward model rewards; 3e-5 stays near the SFT model (docs/tour.md).
PPO_LR, PPO_KL = 3e-5, 0.1
DPO_LR, DPO_BETA = 3e-5, 0.1
BEST_OF = 4  # the best-of-n point the verdict reads
# Thresholds fixed before measuring (the judge's standard error on 200 answers is about 0.07):
FORMAT_PRETRAINED_MAX, FORMAT_SFT_MIN = 0.5, 0.8  # answers in the format: pretrained below, SFT above
REWARD_ACCURACY_MIN = 0.6  # held-out pairs the reward model ranks as the labeller (chance 0.5)
GAIN = 0.1  # best-of-4, PPO and DPO over SFT, in judge points (max 3)
KL_MAX = 2.0  # PPO's KL to SFT, nats per response
DPO_BEHIND_PPO = 0.15  # "gets there": DPO at most this far below PPO
ANSWER_FORMAT = re.compile(r"\banswer is \S")


def fmt(question: str) -> str:
    """The prompt layout every stage shares; the labeller reads the bare question."""
    return f"Q: {question}\nA:"


def best_of_point(best: list[dict[str, Any]]) -> dict[str, Any]:
    """The best-of-n point the verdict reads: n = BEST_OF when measured, else the largest n."""
    return next((b for b in best if b["n"] == BEST_OF), best[-1])


def verdict_parts(
    points: dict[str, dict[str, Any]], reward_accuracy: float, best: dict[str, Any]
) -> dict[str, bool]:
    """One check per sentence of the claim, against the thresholds above. `points` holds the measured
    "pretrained", "sft", "ppo" and "dpo" policies ({"judge", "format", "kl", ...}), `best` the best-of-n
    point."""
    sft = points["sft"]["judge"]
    return {
        "pretrained_does_not_follow": points["pretrained"]["format"] < FORMAT_PRETRAINED_MAX,
        "sft_teaches_format": points["sft"]["format"] > FORMAT_SFT_MIN,
        "reward_model_learns_preferences": reward_accuracy > REWARD_ACCURACY_MIN,
        "reward_model_steers": best["judge"] > sft + GAIN,
        "ppo_improves": points["ppo"]["judge"] > sft + GAIN,
        "ppo_stays_near_sft": points["ppo"]["kl"] < KL_MAX,
        "dpo_improves": points["dpo"]["judge"] > sft + GAIN,
        "dpo_gets_there": points["dpo"]["judge"] >= points["ppo"]["judge"] - DPO_BEHIND_PPO,
    }


def run(ctx: Context) -> Result:
    sizes = QUICK if ctx.quick else FULL
    pretrained, _ = ctx.pretrained_gpt()
    tok = ctx.bpe()
    world = ctx.world
    train_rows = make_task(world, "dialogue", "train")
    dev_rows = make_task(world, "dialogue", "dev")
    if ctx.quick:
        train_rows = train_rows[:400]

    def pairs_of(rows: list[dict]) -> list[PreferencePair]:
        return [PreferencePair(fmt(r["prompt"]), " " + r["chosen"], " " + r["rejected"]) for r in rows]

    pairs, dev_pairs = pairs_of(train_rows), pairs_of(dev_rows)
    questions = {fmt(r["prompt"]): r["prompt"] for r in train_rows + dev_rows}
    eval_prompts = [fmt(r["prompt"]) for r in dev_rows[: sizes.eval_prompts]]
    encode = partial(tok.encode, add_special_tokens=False)  # the prompt as the SFT rows encode it
    pad = tok.eos_id
    seconds: dict[str, float] = {}

    def measure(policy: nn.Module, reference: nn.Module, rm: nn.Module | None) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(ctx.seed + 3)  # the same draws for every policy
        batch, kl = sample_with_kl(policy, reference, eval_prompts, tokenizer=tok, max_new_tokens=MAX_NEW,
                                   generator=gen, format_prompt=encode)
        point = judged(eval_prompts, batch.responses)
        point["kl"] = float(kl.mean())
        if rm is not None:
            point["reward"] = float(score_rollout(rm, batch, "evaluation").mean())
        point["sample"] = batch.responses[:2]
        return point

    def judged(prompts: list[str], responses: list[str]) -> dict[str, Any]:
        scores = [judge(world, questions[p], r.strip()) for p, r in zip(prompts, responses)]
        n = len(scores)
        return {
            "judge": sum(scores) / n,
            "correct": sum(s >= 2 for s in scores) / n,
            "polite": sum(int(s) % 2 == 1 for s in scores) / n,
            "format": sum(bool(ANSWER_FORMAT.search(r)) for r in responses) / n,
        }

    # 1. SFT on the preferred responses, from the pretrained GPT of b (a copy: b's model stays as it is).
    start = time.perf_counter()
    sft = copy.deepcopy(pretrained).train().requires_grad_(True)
    rows = encode_prompt_responses(tok, [PromptCompletion(p.prompt, p.chosen) for p in pairs], MAX_LENGTH)
    batches = ShuffledBatches(rows, partial(collate_prompt_responses, pad_id=pad), BATCH, ctx.seed)
    sft_history = train(sft, sft_step, batches, train_config(ctx, sizes.sft_steps, SFT_LR, "sft",
                                                             weight_decay=0.0)).history
    sft.eval().requires_grad_(False)
    seconds["sft"] = time.perf_counter() - start

    # 2. The reward model: the SFT trunk with a scalar head, Bradley-Terry on the labeller's pairs.
    start = time.perf_counter()
    rm = reward_model(copy.deepcopy(sft).backbone).requires_grad_(True)
    rows = encode_reward_pairs(tok, pairs, MAX_LENGTH, causal=True)
    batches = ShuffledBatches(rows, partial(collate_preferences, pad_id=pad), BATCH, ctx.seed)
    cfg = train_config(ctx, sizes.reward_steps, REWARD_LR, "rm", weight_decay=0.0)
    train(rm, reward_step(), batches, cfg)
    rm.eval().requires_grad_(False)
    rm_dev = evaluate_pairs(rm, encode_reward_pairs(tok, dev_pairs, MAX_LENGTH, causal=True), pad)
    seconds["reward"] = time.perf_counter() - start

    start = time.perf_counter()
    points = {"pretrained": measure(pretrained, sft, rm), "sft": measure(sft, sft, rm)}
    seconds["measure"] = time.perf_counter() - start

    # 3. Best-of-n: SFT samples, the reward model picks; no training.
    start = time.perf_counter()
    best = []
    for n in sizes.best_of:
        picked = best_of_n(sft, rm, eval_prompts, n, tokenizer=tok, max_new_tokens=MAX_NEW,
                           generator=torch.Generator().manual_seed(ctx.seed + 2), format_prompt=encode)
        best.append({"n": n, **judged(eval_prompts, picked.responses), "kl": best_of_n_kl(n),
                     "reward": float(picked.scores.mean())})
    seconds["best_of_n"] = time.perf_counter() - start

    # 4. PPO against the reward model, the critic starting as the reward model (InstructGPT), KL to SFT.
    start = time.perf_counter()
    policy = copy.deepcopy(sft).requires_grad_(True)
    critic = copy.deepcopy(rm).requires_grad_(True)
    ppo_curve = [{"step": 0, **points["sft"]}]
    every = max(1, sizes.ppo_steps // sizes.curve_points)
    ppo_log: list[dict[str, float]] = []

    def on_ppo_step(row: dict[str, float]) -> None:
        ppo_log.append(row)
        if row["step"] % every == 0 or row["step"] == sizes.ppo_steps:
            ppo_curve.append({"step": row["step"], **measure(policy, sft, rm)})

    ppo_cfg = PPOConfig(
        steps=sizes.ppo_steps, batch_size=sizes.ppo_batch, minibatch_size=sizes.ppo_batch // 2, epochs=4,
        max_new_tokens=MAX_NEW, lr=PPO_LR, kl_coef=PPO_KL, vf_coef=0.1, seed=ctx.seed,
        missing_eos_penalty=1.0,
    )
    train_ppo(policy, [p.prompt for p in pairs], rm, ppo_cfg, tokenizer=tok, critic=critic, reference=sft,
              format_prompt=encode, log=on_ppo_step)
    seconds["ppo"] = time.perf_counter() - start

    # 5. DPO on the same pairs, the SFT model as reference; no reward model.
    start = time.perf_counter()
    dpo = copy.deepcopy(sft).train().requires_grad_(True)
    dpo_curve = [{"step": 0, **points["sft"]}]
    dpo_every = max(1, sizes.dpo_steps // sizes.curve_points)

    def on_dpo_eval(model: nn.Module) -> dict[str, float]:
        point = {"step": min(len(dpo_curve) * dpo_every, sizes.dpo_steps), **measure(model, sft, rm)}
        dpo_curve.append(point)
        return {"judge": point["judge"], "kl": point["kl"]}

    rows = encode_preferences(tok, pairs, MAX_LENGTH)
    batches = ShuffledBatches(rows, partial(collate_preferences, pad_id=pad), BATCH, ctx.seed)
    train(dpo, preference_step(PreferenceConfig(beta=DPO_BETA), reference=sft), batches,
          train_config(ctx, sizes.dpo_steps, DPO_LR, "dpo", weight_decay=0.0, eval_every=dpo_every),
          eval_fn=on_dpo_eval)
    seconds["dpo"] = time.perf_counter() - start

    points["ppo"], points["dpo"] = ppo_curve[-1], dpo_curve[-1]
    bon = best_of_point(best)
    sft_judge = points["sft"]["judge"]
    parts = verdict_parts(points, rm_dev["accuracy"], bon)
    supported = all(parts.values())
    failed = [k.replace("_", " ") for k, ok in parts.items() if not ok]

    fig, ax = new_figure()
    ax.plot([p["kl"] for p in ppo_curve], [p["judge"] for p in ppo_curve], "o-", label="PPO")
    ax.plot([p["kl"] for p in dpo_curve], [p["judge"] for p in dpo_curve], "s-", label="DPO")
    ax.plot([b["kl"] for b in best], [b["judge"] for b in best], "^-",
            label="best-of-n (n = " + ", ".join(str(b["n"]) for b in best) + "; KL bound)")
    ax.plot([0.0], [sft_judge], "k*", markersize=12, label="SFT")
    ax.axhline(points["pretrained"]["judge"], color="grey", linestyle="--",
               label=f"pretrained {points['pretrained']['judge']:.2f}")
    ax.set_xlabel("KL to the SFT model (nats per response)")
    ax.set_ylabel("labeller's mean score (max 3)")
    ax.set_ylim(0, 3)
    ax.set_title("Dialogue: the hidden labeller's score against KL")
    ax.legend(fontsize=8)

    rows_out = [["pretrained (b's GPT)", points["pretrained"]]] + [["SFT", points["sft"]]]
    rows_out += [[f"best-of-{b['n']}", b] for b in best]
    rows_out += [[f"PPO ({sizes.ppo_steps} steps)", points["ppo"]]]
    rows_out += [[f"DPO ({sizes.dpo_steps} steps)", points["dpo"]]]
    verdict_note = "every part holds" if supported else "fails: " + ", ".join(failed)
    return Result(
        NAME,
        TITLE,
        CLAIM,
        setup=f"The world's dialogue task: {len(pairs)} training questions (where a person lives, whom they "
        "work for, a sum) each with two answers from a mix of correct/wrong and polite/rude, ranked by the "
        "hidden labeller (plmkit.world.judge: 2 points for a correct answer, 1 for a polite one), which no "
        f"model sees. Pretrained: the GPT of b. SFT: b's GPT fine-tuned {sizes.sft_steps} steps on the "
        f"preferred answers (sft_step). Reward model: the SFT trunk with a scalar head, {sizes.reward_steps} "
        "Bradley-Terry steps (reward_step). Best-of-n: n SFT samples, the reward model picks. PPO "
        f"(train_ppo): {sizes.ppo_steps} steps of {sizes.ppo_batch} prompts, critic from the reward model, "
        f"KL penalty beta {PPO_KL} to SFT. DPO (preference_step): {sizes.dpo_steps} steps, beta {DPO_BETA}, "
        f"reference SFT. Each policy answers {len(eval_prompts)} dev questions, one sample at temperature "
        "1; KL to SFT is measured on those samples (best-of-n: the bound log n - (n-1)/n). Times (s): "
        + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + ".",
        result=f"answers in the format: pretrained {points['pretrained']['format']:.0%}, SFT "
        f"{points['sft']['format']:.0%}; reward model held-out accuracy {rm_dev['accuracy']:.0%} (chance "
        f"50%); labeller's mean score (max 3): pretrained {points['pretrained']['judge']:.2f}, SFT "
        f"{sft_judge:.2f}, "
        f"best-of-{bon['n']} {bon['judge']:.2f}, PPO {points['ppo']['judge']:.2f} at KL "
        f"{points['ppo']['kl']:.2f}, DPO {points['dpo']['judge']:.2f} at KL {points['dpo']['kl']:.2f} "
        f"({verdict_note}).",
        supported=supported,
        key=f"labeller score SFT {sft_judge:.2f}, best-of-{bon['n']} {bon['judge']:.2f}, PPO "
        f"{points['ppo']['judge']:.2f}, DPO {points['dpo']['judge']:.2f}; reward model "
        f"{rm_dev['accuracy']:.0%}",
        metrics={
            "reward_model_dev_accuracy": rm_dev["accuracy"],
            "parts": parts,
            "policies": {k: {m: v for m, v in p.items() if m != "sample"} for k, p in points.items()},
            "best_of_n": best,
            "ppo_curve": [{m: v for m, v in p.items() if m != "sample"} for p in ppo_curve],
            "dpo_curve": [{m: v for m, v in p.items() if m != "sample"} for p in dpo_curve],
            "samples": {k: p.get("sample", []) for k, p in points.items()},
            "ppo_log_last": ppo_log[-1] if ppo_log else {},
            "sft_final_loss": sft_history[-1].get("loss") if sft_history else None,
            "seconds": seconds,
            "thresholds": {
                "format_pretrained_max": FORMAT_PRETRAINED_MAX, "format_sft_min": FORMAT_SFT_MIN,
                "reward_accuracy_min": REWARD_ACCURACY_MIN, "gain": GAIN, "kl_max": KL_MAX,
                "dpo_behind_ppo": DPO_BEHIND_PPO, "best_of": BEST_OF,
            },
        },
        tables=[
            table(
                ["policy", "labeller score", "correct", "polite", "in the format", "KL to SFT", "RM score"],
                [
                    [name, p["judge"], p["correct"], p["polite"], p["format"], p["kl"], p["reward"]]
                    for name, p in rows_out
                ],
            )
        ],
        plots={"rlhf": figure_png(fig)},
    )
