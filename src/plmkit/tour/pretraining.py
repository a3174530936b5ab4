"""b. Pretraining: a tiny GPT learns the world from unlabelled text with the causal LM loss."""

from __future__ import annotations

import math

from plmkit.prompting import score_label_words
from plmkit.tour.common import Context, Result, figure_png, majority_baseline, new_figure

NAME = "pretraining"
TITLE = "b. Pretraining a tiny GPT on world text"
CLAIM = (
    "Next-token prediction on unlabelled text alone drives the loss far below a uniform guess and stores "
    "facts of the world in the weights: the model completes 'NAME lives in' with the right city."
)


def run(ctx: Context) -> Result:
    model, rec = ctx.pretrained_gpt()
    tok = ctx.bpe()
    world = ctx.world
    cities = [p.name for p in world.places]
    verbalizer = {c: " " + c for c in cities}
    people = world.people
    prompts = [f"{p.name} lives in" for p in people]
    scores = score_label_words(model, tok, prompts, verbalizer)
    predicted = [cities[i] for i in scores.argmax(1).tolist()]
    acc = sum(pred == p.city for pred, p in zip(predicted, people)) / len(people)
    baseline = majority_baseline([p.city for p in people])
    uniform = math.log(tok.vocab_size)
    fig, ax = new_figure()
    steps, losses = zip(*rec["curve"])
    ax.plot(steps, losses, label="train loss (GPT, causal LM)")
    ax.axhline(uniform, color="grey", linestyle="--", label=f"uniform guess ln V = {uniform:.2f}")
    ax.axhline(rec["dev_loss"], color="green", linestyle=":", label=f"held-out loss {rec['dev_loss']:.2f}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("Pretraining loss")
    ax.legend()
    supported = rec["dev_loss"] < 0.5 * uniform and acc > 2 * baseline
    return Result(
        NAME,
        TITLE,
        CLAIM,
        setup=f"GPT-2 architecture, {rec['params'] / 1e6:.2f}M parameters, BPE vocabulary {tok.vocab_size}, "
        f"blocks of 192 tokens, {rec['steps']} AdamW steps of 8 blocks on {rec['train_tokens']} tokens "
        f"({rec['seconds']:.0f}s). Fact probe: rank all {len(cities)} cities as the continuation of "
        f"'NAME lives in' for each of {len(people)} people (label-word scoring, plmkit.prompting).",
        result=f"held-out loss {rec['dev_loss']:.2f} nats/token vs {uniform:.2f} for a uniform guess; "
        f"city of a person: {acc:.0%} correct vs {baseline:.0%} for always naming the most common city.",
        supported=supported,
        metrics={
            "dev_loss": rec["dev_loss"],
            "uniform_loss": uniform,
            "fact_accuracy": acc,
            "fact_majority_baseline": baseline,
            "seconds": rec["seconds"],
        },
        plots={"pretraining_loss": figure_png(fig)},
    )
