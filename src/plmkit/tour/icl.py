"""h. In-context learning: demonstrations in the prompt, no gradient update."""

from __future__ import annotations

import random

from plmkit.prompting import build_few_shot_prompt, score_label_words
from plmkit.tour.common import (
    REVIEW_TEMPLATE,
    VERBALIZER_SETS,
    Context,
    Result,
    figure_png,
    new_figure,
    table,
)
from plmkit.world import make_task

NAME = "icl"
TITLE = "h. In-context learning with 0, 1, 4 and 8 demonstrations"
CLAIM = (
    "A pretrained causal LM performs a task from demonstrations in its prompt, without any gradient update: "
    "accuracy rises over zero-shot as demonstrations are added."
)
SHOTS = (0, 1, 4, 8)


def run(ctx: Context) -> Result:
    model, _ = ctx.pretrained_gpt()
    tok = ctx.bpe()
    world = ctx.world
    train = make_task(world, "sentiment", "train")
    test = make_task(world, "sentiment", "test", ctx.steps(200, 60))
    rng = random.Random(f"icl-{ctx.seed}")
    episode_sets = [rng.randrange(len(VERBALIZER_SETS)) for _ in test]
    # Every label word of every pair competes: the demonstrations must tell the model which pair is in use.
    all_words = {(s, label): words[label] for s, words in enumerate(VERBALIZER_SETS) for label in (0, 1)}
    accuracy, pair_accuracy = {}, {}
    for k in SHOTS:
        prompts = []
        for i, (record, s) in enumerate(zip(test, episode_sets)):
            demos = [
                {"sentence": r["sentence"], "label": VERBALIZER_SETS[s][r["label"]]} for r in train[i * 8 :]
            ]
            prompts.append(
                build_few_shot_prompt(
                    REVIEW_TEMPLATE, demos[:64], record, k=k, seed=ctx.seed + i, separator="\n"
                )
            )
        scores = score_label_words(model, tok, prompts, all_words)
        keys = list(all_words)
        predicted = [keys[j] for j in scores.argmax(1).tolist()]
        accuracy[k] = sum(p == (s, r["label"]) for p, s, r in zip(predicted, episode_sets, test)) / len(test)
        # The classic verbalizer reading: only the episode's own two words compete.
        own = [
            scores[i, [keys.index((s, 0)), keys.index((s, 1))]].argmax().item()
            for i, s in enumerate(episode_sets)
        ]
        pair_accuracy[k] = sum(o == r["label"] for o, r in zip(own, test)) / len(test)
    correct_words = [(s, r["label"]) for s, r in zip(episode_sets, test)]
    baseline = max(correct_words.count(w) for w in set(correct_words)) / len(test)
    pair_baseline = max(sum(r["label"] for r in test), sum(1 - r["label"] for r in test)) / len(test)
    fig, ax = new_figure()
    ax.plot(SHOTS, [accuracy[k] for k in SHOTS], marker="o", label="answer among all 8 label words")
    ax.plot(SHOTS, [pair_accuracy[k] for k in SHOTS], marker="s", label="among the episode's 2 label words")
    ax.axhline(baseline, color="grey", linestyle="--", label=f"majority word {baseline:.2f}")
    ax.axhline(pair_baseline, color="grey", linestyle=":", label=f"majority class {pair_baseline:.2f}")
    ax.set_xlabel("demonstrations in the prompt")
    ax.set_ylabel("accuracy")
    ax.set_xticks(SHOTS)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("In-context learning (no gradient update)")
    supported = accuracy[4] > accuracy[0] + 0.1 and accuracy[8] > accuracy[0] + 0.1
    return Result(
        NAME,
        TITLE,
        CLAIM,
        setup="The GPT of experiment b (its corpus includes episodes of 1-8 formatted reviews, each "
        f"episode using one of {len(VERBALIZER_SETS)} label-word pairs). {len(test)} test reviews, each "
        "given a random pair; k demonstrations from the training split written with that pair; "
        "the prediction is the most likely of all 8 label words (plmkit.prompting.score_label_words).",
        result=", ".join(f"{k}-shot {accuracy[k]:.0%}" for k in SHOTS)
        + f" (majority word {baseline:.0%}); among the episode's own two words: "
        + ", ".join(f"{k}-shot {pair_accuracy[k]:.0%}" for k in SHOTS)
        + f" (majority class {pair_baseline:.0%}).",
        supported=supported,
        key=f"0-shot {accuracy[0]:.0%}, 4-shot {accuracy[4]:.0%}, 8-shot {accuracy[8]:.0%} (majority word "
        f"{baseline:.0%})",
        metrics={
            "accuracy": accuracy,
            "pair_accuracy": pair_accuracy,
            "majority_word": baseline,
            "majority_class": pair_baseline,
        },
        tables=[
            table(
                ["demonstrations", "accuracy (8 words)", "accuracy (own pair)"],
                [[k, accuracy[k], pair_accuracy[k]] for k in SHOTS],
            )
        ],
        plots={"icl": figure_png(fig)},
    )
