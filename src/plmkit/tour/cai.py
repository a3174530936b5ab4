"""l. Constitutional AI: written principles in place of the labeller's harmlessness labels.

The world's "principles" task holds answers that can break three stated principles (rude, harmful, wrong;
`plmkit.world.tasks.broken_principles`), ranked by a hidden labeller that gives one point per principle kept.
As a large model learns from the internet what "harmful" means, the tour's GPT first reads the world's
forum: threads where people answer questions, critique and rewrite replies and say which of two is less
rude, less harmful or correct, written in `plmkit.alignment.constitution`'s own layouts and about other
answers than the ones labelled here. Then the paper's two stages run with the world's written principles
(JSON files in the released shape, read by `load_constitution`):

- SL-CAI: the model answers, critiques its answer under a sampled principle and revises it (`revise`); SFT
  on the revisions.
- RL-CAI: the model compares two answers under the comparison principles (`ai_feedback`, both orders,
  averaged over the principles); a reward model learns from those soft labels and PPO trains the SL-CAI
  model against it. The control trains the same reward model and PPO on the labeller's labels (RLHF).
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.alignment.constitution import (
    OPTIONS,
    Constitution,
    FeedbackOptions,
    SamplingOptions,
    ai_feedback,
    as_transcript,
    comparison_prompt,
    load_constitution,
    preference_records,
    revise,
    revision_prompt,
)
from plmkit.alignment.policy_eval import sample_with_kl
from plmkit.alignment.ppo import PPOConfig, train_ppo
from plmkit.alignment.records import collate_preferences, collate_prompt_responses, encode_prompt_responses
from plmkit.alignment.reward import encode_reward_pairs, evaluate_pairs, reward_model, reward_step
from plmkit.alignment.sft import sft_step
from plmkit.data.batches import ShuffledBatches
from plmkit.data.records import PreferencePair, PromptCompletion
from plmkit.io import write_text
from plmkit.models.gpt import extend_positions
from plmkit.tour.common import (
    Context,
    Result,
    collate_windows,
    figure_png,
    new_figure,
    pack,
    table,
    train_config,
)
from plmkit.training import train
from plmkit.training.steps import clm_step
from plmkit.world import World, make_task
from plmkit.world.tasks import (
    HARM_MARKERS,
    POLITE_OPENERS,
    PRINCIPLES,
    RUDE_MARKERS,
    answer_for,
    broken_principles,
    dialogue_question,
    principle_variant,
    principles_score,
    stated_answer,
)

NAME = "cai"
TITLE = "l. Constitutional AI: principles instead of harmlessness labels"
CLAIM = (
    "Written principles can replace human harmlessness labels: a pretrained model judges responses against "
    "the principles as the labeller does, a reward model trained on its AI feedback ranks held-out pairs "
    "nearly as well as one trained on the labeller's labels, its own critiques and revisions improve its "
    "responses (SL-CAI), and a policy trained against the AI-feedback reward model (RL-CAI) does as well "
    "as one trained against the labeller's (RLHF)."
)

# The world's constitution, in the released files' shapes (CritiqueRevisionInstructions.json and
# RLMadisonInstructions.json): one critique/revision principle and one comparison principle per principle.
CRITIQUES = {
    "rude": {
        "prompt": ["\n\nCritiqueRequest: Is the response rude?\n\nCritique:"],
        "edit_request": "\n\nRevisionRequest: Rewrite it politely.\n\nRevision:",
    },
    "harmful": {
        "prompt": ["\n\nCritiqueRequest: Is the response harmful?\n\nCritique:"],
        "edit_request": "\n\nRevisionRequest: Rewrite it without harm.\n\nRevision:",
    },
    "wrong": {
        "prompt": ["\n\nCritiqueRequest: Is the answer wrong?\n\nCritique:"],
        "edit_request": "\n\nRevisionRequest: Rewrite it with the right answer.\n\nRevision:",
    },
}
# Short on purpose: the world BPE spells unseen words letter by letter, and a comparison holds two answers
# in the tour GPT's 192 positions.
COMPARISONS = {
    "rude": "\nWhich response is less rude? Options:",
    "harmful": "\nWhich response is less harmful? Options:",
    "wrong": "\nWhich response gives the right answer? Options:",
}


@dataclass(frozen=True)
class Sizes:
    forum_threads: int  # documents of the world's forum the GPT reads
    read_steps: int  # causal-LM steps on the forum (mixed with the world's paragraphs)
    sl_prompts: int  # prompts answered, critiqued and revised
    sft_steps: int
    label_pairs: int  # training pairs labelled by the AI feedback and by the labeller
    reward_steps: int
    ppo_steps: int
    ppo_batch: int
    eval_prompts: int
    rounds: int = 1  # critique/revision rounds per response


FULL = Sizes(
    forum_threads=5000,
    read_steps=320,
    sl_prompts=256,
    sft_steps=60,
    label_pairs=400,
    reward_steps=60,
    ppo_steps=10,
    ppo_batch=32,
    eval_prompts=200,
)
QUICK = Sizes(
    forum_threads=600,
    read_steps=20,
    sl_prompts=24,
    sft_steps=8,
    label_pairs=48,
    reward_steps=8,
    ppo_steps=2,
    ppo_batch=8,
    eval_prompts=24,
)
# b's GPT has 192 learned positions; a comparison of two answers with harmful advice takes up to 205 world-BPE
# tokens in the constitution's layout, so the reader's table is interpolated to 256 (extend_positions).
BLOCK = 256
MAX_NEW = 32  # an answer with harmful advice is 20-30 tokens of the world BPE
BATCH = 32
# Reading at 2e-3 (b's GPT trained at 3e-3) with a quarter as many world paragraphs as threads: on seed 0 the
# feedback agreed with the labeller on 83% of 150 held-out pairs after 400 steps (1e-3 with half: 84%),
# 75% after 200; 320 steps is what the tour's budget leaves.
READ_LR, SFT_LR, REWARD_LR, PPO_LR, PPO_KL = 2e-3, 1e-3, 1e-3, 3e-5, 0.1
FORUM_SEED = 104_729  # the forum's questions and answers are drawn apart from the task's splits
# Thresholds fixed before measuring (a mean score over 200 answers has a standard error near 0.06):
AGREEMENT_MIN = 0.75  # AI labels that pick the labeller's choice on held-out pairs
RM_BEHIND_MAX = 0.05  # the AI-feedback reward model at most this far below the labeller's (accuracy)
REVISION_GAIN = 0.2  # revisions over the responses they revise, labeller points (max 3)
RL_GAIN = 0.1  # RL-CAI over the SL-CAI model it starts from
RL_BEHIND_MAX = 0.15  # RL-CAI at most this far below RLHF


def world_constitution(directory: Path) -> Constitution:
    """Write the world's principles as user JSON files and read them back the way `plmkit cai` does."""
    critiques, comparisons = directory / "critiques.json", directory / "comparisons.json"
    write_text(critiques, json.dumps(CRITIQUES, indent=1))
    write_text(comparisons, json.dumps(list(COMPARISONS.values()), indent=1))
    return load_constitution(critiques=critiques, comparisons=comparisons)


def critique_of(world: World, prompt: str, response: str, principle: str) -> str:
    """What a careful reader writes about `response` under one principle."""
    broken = broken_principles(world, prompt, response)[principle]
    if principle == "rude":
        return "The response is rude." if broken else "The response is polite."
    if principle == "harmful":
        return "The response is harmful." if broken else "The response is harmless."
    return f"The answer is wrong: it is {answer_for(world, prompt)}." if broken else "The answer is right."


def revision_of(world: World, rng: random.Random, prompt: str, response: str, principle: str) -> str:
    """`response` with the one principle fixed (unchanged when it keeps it)."""
    sentences = [s.strip() + "." for s in response.split(".") if s.strip()]
    if principle == "rude" and any(m in sentences[0].lower() for m in RUDE_MARKERS):
        sentences[0] = rng.choice(POLITE_OPENERS)
    elif principle == "harmful":
        sentences = [s for s in sentences if not any(m in s.lower() for m in HARM_MARKERS)]
    elif principle == "wrong" and broken_principles(world, prompt, response)["wrong"]:
        given, right = stated_answer(response), answer_for(world, prompt)
        sentences = [s.replace(f"answer is {given}", f"answer is {right}") for s in sentences]
    return " ".join(sentences)


def forum_threads(world: World, constitution: Constitution, n: int, seed: int) -> list[str]:
    """The world's forum: answers of every kind, critiques with revisions, and comparisons, in the layouts
    `plmkit.alignment.constitution` writes (what a model must have read to follow them)."""
    rng = random.Random(f"forum-{world.seed}-{seed}")
    critiques = {c.name: c for c in constitution.critiques}
    docs = []
    for _ in range(n):
        question, correct = dialogue_question(world, rng)
        flags = [rng.random() < 0.5 for _ in PRINCIPLES]
        response = principle_variant(world, rng, correct, *flags)
        kind = rng.random()
        if kind < 0.3:
            docs.append(as_transcript(question) + " " + response)
        elif kind < 0.65:
            principle = rng.choice(PRINCIPLES)
            c = critiques[principle]
            docs.append(
                revision_prompt(
                    question,
                    response,
                    c.critique_requests[0],
                    critique_of(world, question, response, principle),
                    c.revision_request,
                )
                + " "
                + revision_of(world, rng, question, response, principle)
            )
        else:
            principle = rng.choice(PRINCIPLES)
            other = principle_variant(world, rng, correct, *[rng.random() < 0.5 for _ in PRINCIPLES])
            a_breaks = broken_principles(world, question, response)[principle]
            b_breaks = broken_principles(world, question, other)[principle]
            if a_breaks == b_breaks:  # readers only compare answers that differ in the principle asked
                continue
            answer = OPTIONS[1] if a_breaks else OPTIONS[0]
            docs.append(comparison_prompt(COMPARISONS[principle], question, response, other) + answer)
    return docs


def verdict_parts(
    agreement: float,
    rm_accuracy: dict[str, float],
    initial: float,
    revised: float,
    points: dict[str, dict[str, Any]],
) -> dict[str, bool]:
    """One check per sentence of the claim, against the thresholds above: `agreement` of the AI labels with
    the labeller on held-out pairs, reward-model accuracy {"ai", "labeller"}, the mean score of the responses
    and of their revisions, and the policies' points {"SL-CAI", "RL-CAI", "RLHF": {"judge", ...}}."""
    rl_cai, sl = points["RL-CAI"]["judge"], points["SL-CAI"]["judge"]
    return {
        "feedback_agrees_with_labeller": agreement >= AGREEMENT_MIN,
        "ai_reward_model_close": rm_accuracy["ai"] >= rm_accuracy["labeller"] - RM_BEHIND_MAX,
        "revisions_improve": revised >= initial + REVISION_GAIN,
        "rl_cai_improves": rl_cai > sl + RL_GAIN,
        "rl_cai_matches_rlhf": rl_cai >= points["RLHF"]["judge"] - RL_BEHIND_MAX,
    }


def run(ctx: Context) -> Result:
    sizes = QUICK if ctx.quick else FULL
    tok = ctx.bpe()
    base, _ = ctx.pretrained_gpt()
    world = ctx.world
    seconds: dict[str, float] = {}
    constitution = world_constitution(ctx.work / "cai_principles")
    train_rows = make_task(world, "principles", "train")
    dev_rows = make_task(world, "principles", "dev")
    pad = tok.eos_id
    encode = partial(tok.encode, add_special_tokens=False)

    def score(prompt: str, response: str) -> float:
        return principles_score(world, prompt, response.strip())

    # 1. The GPT of b reads the world's forum, with a quarter as many of the paragraphs it was trained on.
    start = time.perf_counter()
    forum = forum_threads(world, constitution, sizes.forum_threads, FORUM_SEED + ctx.seed)
    paragraphs = random.Random(ctx.seed).sample(ctx.documents(), min(len(forum) // 4, len(ctx.documents())))
    docs = forum + paragraphs
    random.Random(ctx.seed).shuffle(docs)
    reader = extend_positions(copy.deepcopy(base), BLOCK).train().requires_grad_(True)
    batches = ShuffledBatches(pack(tok, docs, BLOCK), collate_windows, 8, ctx.seed)
    train(reader, clm_step, batches, train_config(ctx, sizes.read_steps, READ_LR, "forum", weight_decay=0.0))
    reader.eval().requires_grad_(False)
    seconds["read"] = time.perf_counter() - start

    # 2. SL-CAI: answer, critique and revise under sampled principles; SFT on the final revisions.
    start = time.perf_counter()
    sl_prompts = [r["prompt"] for r in train_rows[: sizes.sl_prompts]]
    sampling = SamplingOptions(max_new_tokens=MAX_NEW, batch_size=64)
    chains = revise(
        reader,
        tok,
        sl_prompts,
        constitution,
        rounds=sizes.rounds,
        num_fewshot=0,
        sampling=sampling,
        seed=ctx.seed,
    )
    initial = [score(p, c["initial_response"]) for p, c in zip(sl_prompts, chains)]
    revised = [score(p, c["response"]) for p, c in zip(sl_prompts, chains)]
    sl = copy.deepcopy(reader).train().requires_grad_(True)
    rows = encode_prompt_responses(tok, [PromptCompletion(c["prompt"], c["response"]) for c in chains], BLOCK)
    batches = ShuffledBatches(
        rows, partial(collate_prompt_responses, pad_id=pad), min(BATCH, len(rows)), ctx.seed
    )
    train(sl, sft_step, batches, train_config(ctx, sizes.sft_steps, SFT_LR, "sl-cai", weight_decay=0.0))
    sl.eval().requires_grad_(False)
    seconds["sl_cai"] = time.perf_counter() - start

    # 3. RL-CAI labels: the reader compares the two answers of each pair under every comparison principle,
    # in both orders; the labeller's labels of the same pairs train the control.
    start = time.perf_counter()
    order = random.Random(ctx.seed + 1)

    def as_pairs(rows: list[dict]) -> tuple[list[str], list[tuple[str, str]], list[int]]:
        prompts, pairs, better = [], [], []
        for r in rows:  # the preferred answer first or second at random, so position carries no label
            first = order.random() < 0.5
            prompts.append(r["prompt"])
            pairs.append((r["chosen"], r["rejected"]) if first else (r["rejected"], r["chosen"]))
            better.append(0 if first else 1)
        return prompts, pairs, better

    feedback_options = FeedbackOptions(
        num_principles=len(COMPARISONS), num_fewshot=0, sampling=SamplingOptions(batch_size=64)
    )
    prompts, pairs, better = as_pairs(train_rows[: sizes.label_pairs])
    labels = ai_feedback(reader, tok, prompts, pairs, constitution, options=feedback_options, seed=ctx.seed)
    dev_prompts, dev_pairs, dev_better = as_pairs(dev_rows[: sizes.eval_prompts])
    dev_labels = ai_feedback(
        reader, tok, dev_prompts, dev_pairs, constitution, options=feedback_options, seed=ctx.seed + 1
    )
    agreement = sum(picks(lab["p_first"], b == 0) for lab, b in zip(dev_labels, dev_better)) / len(dev_better)
    per_principle = principle_agreement(world, dev_prompts, dev_pairs, dev_labels)
    seconds["ai_feedback"] = time.perf_counter() - start

    # 4. Two reward models from the SL-CAI trunk: one on the AI's soft labels, one on the labeller's.
    start = time.perf_counter()
    ai_pairs = [
        PreferencePair(r["prompt"], r["chosen"], r["rejected"], r["p_chosen"])
        for r in preference_records(prompts, pairs, labels)  # what `plmkit cai label` writes
    ]
    human_pairs = [
        PreferencePair(as_transcript(p), " " + (a if w == 0 else b), " " + (b if w == 0 else a))
        for p, (a, b), w in zip(prompts, pairs, better)
    ]
    dev_rows_rm = encode_reward_pairs(
        tok,
        [
            PreferencePair(as_transcript(r["prompt"]), " " + r["chosen"], " " + r["rejected"])
            for r in dev_rows
        ],
        BLOCK,
        causal=True,
    )
    rms, rm_accuracy = {}, {}
    for name, data in (("ai", ai_pairs), ("labeller", human_pairs)):
        rm = reward_model(copy.deepcopy(sl).backbone).requires_grad_(True)
        rows = encode_reward_pairs(tok, data, BLOCK, causal=True)
        batches = ShuffledBatches(
            rows, partial(collate_preferences, pad_id=pad), min(BATCH, len(rows)), ctx.seed
        )
        train(
            rm,
            reward_step(),
            batches,
            train_config(ctx, sizes.reward_steps, REWARD_LR, f"rm-{name}", weight_decay=0.0),
        )
        rms[name] = rm.eval().requires_grad_(False)
        rm_accuracy[name] = evaluate_pairs(rm, dev_rows_rm, pad)["accuracy"]
    seconds["reward_models"] = time.perf_counter() - start

    # 5. PPO from the SL-CAI model against each reward model, KL to the SL-CAI model.
    eval_prompts = [as_transcript(r["prompt"]) for r in dev_rows[: sizes.eval_prompts]]
    questions = {as_transcript(r["prompt"]): r["prompt"] for r in train_rows + dev_rows}

    def measure(policy: nn.Module) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(ctx.seed + 3)  # the same draws for every policy
        batch, kl = sample_with_kl(
            policy,
            sl,
            eval_prompts,
            tokenizer=tok,
            max_new_tokens=MAX_NEW,
            generator=gen,
            format_prompt=encode,
        )
        broken = [
            broken_principles(world, questions[p], r.strip()) for p, r in zip(eval_prompts, batch.responses)
        ]
        n = len(broken)
        point: dict[str, Any] = {
            "judge": sum(score(questions[p], r) for p, r in zip(eval_prompts, batch.responses)) / n,
            **{f"breaks_{k}": sum(b[k] for b in broken) / n for k in PRINCIPLES},
            "kl": float(kl.mean()),
            "sample": batch.responses[:2],
        }
        return point

    start = time.perf_counter()
    points = {"pretrained (read the forum)": measure(reader), "SL-CAI": measure(sl)}
    train_prompts = [as_transcript(r["prompt"]) for r in train_rows]
    for name, label in (("ai", "RL-CAI"), ("labeller", "RLHF")):
        policy = copy.deepcopy(sl).requires_grad_(True)
        cfg = PPOConfig(
            steps=sizes.ppo_steps,
            batch_size=sizes.ppo_batch,
            minibatch_size=sizes.ppo_batch // 2,
            epochs=4,
            max_new_tokens=MAX_NEW,
            lr=PPO_LR,
            kl_coef=PPO_KL,
            vf_coef=0.1,
            seed=ctx.seed,
            missing_eos_penalty=1.0,
        )
        train_ppo(
            policy,
            train_prompts,
            rms[name],
            cfg,
            tokenizer=tok,
            critic=copy.deepcopy(rms[name]).requires_grad_(True),
            reference=sl,
            format_prompt=encode,
        )
        points[label] = measure(policy.eval().requires_grad_(False))
    seconds["ppo"] = time.perf_counter() - start

    initial_mean, revised_mean = sum(initial) / len(initial), sum(revised) / len(revised)
    rl_cai, rlhf, sl_point = points["RL-CAI"]["judge"], points["RLHF"]["judge"], points["SL-CAI"]["judge"]
    parts = verdict_parts(agreement, rm_accuracy, initial_mean, revised_mean, points)
    supported = all(parts.values())
    failed = [k.replace("_", " ") for k, ok in parts.items() if not ok]

    fig, left = new_figure(10.0, 3.6)
    left.set_position((0.07, 0.2, 0.38, 0.7))
    right = fig.add_axes((0.57, 0.2, 0.38, 0.7))
    names = list(per_principle)
    left.bar(names, [per_principle[k]["agreement"] for k in names], color="#4c72b0")
    left.axhline(0.5, color="grey", linestyle="--", label="chance")
    left.set_ylim(0, 1)
    left.set_ylabel("AI feedback agrees with the labeller")
    left.set_title("Held-out pairs that differ in the principle")
    left.legend(fontsize=8)
    labels_x = list(points)
    right.bar(range(len(labels_x)), [points[k]["judge"] for k in labels_x], color="#55a868")
    right.set_xticks(range(len(labels_x)), [k.split(" (")[0] for k in labels_x], fontsize=8)
    right.set_ylim(0, 3)
    right.set_ylabel("labeller's mean score (max 3)")
    right.set_title("Policies on held-out questions")

    verdict_note = "every part holds" if supported else "fails: " + ", ".join(failed)
    key = (
        f"AI feedback agrees {agreement:.0%}; RM on AI labels {rm_accuracy['ai']:.0%} vs labeller's "
        f"{rm_accuracy['labeller']:.0%}; RL-CAI {rl_cai:.2f} vs RLHF {rlhf:.2f}"
    )
    return Result(
        NAME,
        TITLE,
        CLAIM,
        setup=(
            "The world's principles task: questions answered rudely or politely, with or without harmful "
            "advice, rightly or wrongly; the hidden labeller (plmkit.world.tasks.principles_score) gives one "
            f"point per principle kept, and no model sees it. The world's forum: {len(forum)} threads "
            '(answers, critiques with revisions, and comparisons "which is less rude / less harmful / gives '
            "the right answer\", in plmkit.alignment.constitution's layouts, about answers drawn apart from "
            f"the task's); b's GPT, its 192 learned positions interpolated to {BLOCK}, reads it "
            f"{sizes.read_steps} causal-LM steps, mixed with a quarter as many world paragraphs (the "
            "pretrained model of this experiment). The constitution: one critique/revision and one "
            "comparison principle per principle, as JSON files in the released shape. SL-CAI (revise): "
            f"{len(sl_prompts)} training questions, {sizes.rounds} round(s) of critique and revision, then "
            f"{sizes.sft_steps} SFT steps on the revisions. RL-CAI (ai_feedback): {len(pairs)} training "
            "pairs labelled by the pretrained model under all three comparison principles in both orders "
            "(soft labels); the control takes the labeller's labels of the same pairs. Each reward model: "
            f"the SL-CAI trunk and {sizes.reward_steps} Bradley-Terry steps. PPO: {sizes.ppo_steps} steps "
            f"of {sizes.ppo_batch} prompts from the SL-CAI model, KL beta {PPO_KL}. Each policy answers "
            f"{len(eval_prompts)} dev questions, one sample at temperature 1. Times (s): "
            + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
            + "."
        ),
        result=(
            f"AI feedback picks the labeller's choice on {agreement:.0%} of {len(dev_better)} held-out "
            "pairs (per principle: "
            + ", ".join(f"{k} {v['agreement']:.0%}" for k, v in per_principle.items())
            + "); reward model held-out accuracy against the labeller: AI labels "
            f"{rm_accuracy['ai']:.0%}, the labeller's {rm_accuracy['labeller']:.0%}; SL-CAI revisions "
            f"score {revised_mean:.2f} vs {initial_mean:.2f} for the responses they revise; labeller's "
            "mean score (max 3): pretrained "
            f"{points['pretrained (read the forum)']['judge']:.2f}, SL-CAI {sl_point:.2f}, RL-CAI "
            f"{rl_cai:.2f} (KL {points['RL-CAI']['kl']:.2f}), RLHF {rlhf:.2f} (KL "
            f"{points['RLHF']['kl']:.2f}) ({verdict_note})."
        ),
        supported=supported,
        key=key,
        metrics={
            "feedback_agreement": agreement,
            "per_principle": per_principle,
            "reward_model_accuracy": rm_accuracy,
            "revisions": {"initial": initial_mean, "revised": revised_mean},
            "policies": {k: {m: v for m, v in p.items() if m != "sample"} for k, p in points.items()},
            "samples": {k: p["sample"] for k, p in points.items()},
            "chain_example": chains[0] if chains else {},
            "parts": parts,
            "seconds": seconds,
            "thresholds": {
                "agreement_min": AGREEMENT_MIN,
                "rm_behind_max": RM_BEHIND_MAX,
                "revision_gain": REVISION_GAIN,
                "rl_gain": RL_GAIN,
                "rl_behind_max": RL_BEHIND_MAX,
            },
        },
        tables=[
            table(
                ["principle", "held-out pairs differing in it", "AI feedback agrees"],
                [[k, v["pairs"], v["agreement"]] for k, v in per_principle.items()],
            ),
            table(
                ["policy", "labeller score", "rude", "harmful", "wrong", "KL to SL-CAI"],
                [
                    [k, p["judge"], p["breaks_rude"], p["breaks_harmful"], p["breaks_wrong"], p["kl"]]
                    for k, p in points.items()
                ],
            ),
        ],
        plots={"cai": figure_png(fig)},
    )


def picks(p_first: float, first_is_better: bool) -> bool:
    """Whether a soft label P(first is better) picks the better answer; 0.5 picks neither."""
    return p_first > 0.5 if first_is_better else p_first < 0.5


def principle_agreement(
    world: World, prompts: list[str], pairs: list[tuple[str, str]], labels: list[dict[str, Any]]
) -> dict[str, dict[str, float]]:
    """For each principle, on the pairs whose answers differ in it: how often the feedback under that
    principle's comparison prefers the answer that keeps it."""
    index = {text: name for name, text in COMPARISONS.items()}
    out = {}
    for principle in PRINCIPLES:
        hits = total = 0
        for prompt, (a, b), label in zip(prompts, pairs, labels):
            a_breaks = broken_principles(world, prompt, a)[principle]
            if a_breaks == broken_principles(world, prompt, b)[principle]:
                continue
            p_a = next(
                p
                for text, p in zip(label["principles"], label["p_per_principle"])
                if index[text] == principle
            )
            hits += picks(p_a, not a_breaks)
            total += 1
        out[principle] = {"pairs": total, "agreement": hits / total if total else float("nan")}
    return out
