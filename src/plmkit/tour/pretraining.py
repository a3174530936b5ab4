"""b. Pretraining: a tiny GPT learns the world from unlabelled text with the causal LM loss."""

from __future__ import annotations

import math

from plmkit.prompting import score_label_words
from plmkit.tour.common import Context, Result, figure_png, majority_baseline, new_figure

NAME = "pretraining"
TITLE = "b. Pretraining a tiny GPT and a tiny BERT on world text"
CLAIM = (
    "Self-supervision on unlabelled text alone (next-token prediction for a GPT, masked-token prediction "
    "for a BERT) drives the loss far below a uniform guess and stores facts of the world in the weights: "
    "the GPT completes 'NAME lives in' with the right city."
)


def run(ctx: Context) -> Result:
    model, rec = ctx.pretrained_gpt()
    bert, brec = ctx.pretrained_bert()
    tok = ctx.bpe()
    wp_uniform = math.log(ctx.wordpiece().vocab_size)
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
    ax.plot(steps, losses, label="GPT train loss (causal LM)")
    bsteps, blosses = zip(*brec["curve"])
    ax.plot(bsteps, blosses, label="BERT train loss (MLM, masked tokens)")
    ax.axhline(uniform, color="grey", linestyle="--", label=f"uniform guess ln V = {uniform:.2f}")
    ax.axhline(rec["dev_loss"], color="C0", linestyle=":", label=f"GPT held-out {rec['dev_loss']:.2f}")
    ax.axhline(brec["dev_loss"], color="C1", linestyle=":", label=f"BERT held-out {brec['dev_loss']:.2f}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("Pretraining loss")
    ax.legend(fontsize=8)
    ax.axhline(brec["unigram_loss"], color="C1", linestyle="-.", linewidth=0.8,
               label=f"BERT unigram (no context) {brec['unigram_loss']:.2f}")
    # Using context means going well below the unigram loss, not only below the uniform guess.
    supported = (
        rec["dev_loss"] < 0.5 * rec["unigram_loss"]
        and acc > 2 * baseline
        and brec["dev_loss"] < 0.75 * brec["unigram_loss"]
    )
    return Result(
        NAME,
        TITLE,
        CLAIM,
        setup=f"GPT-2 architecture, {rec['params'] / 1e6:.2f}M parameters, BPE vocabulary {tok.vocab_size}, "
        f"blocks of 192 tokens, {rec['steps']} AdamW steps of 8 blocks on {rec['train_tokens']} tokens "
        f"({rec['seconds']:.0f}s). BERT architecture (post-LN encoder), {brec['params'] / 1e6:.2f}M "
        f"parameters, WordPiece vocabulary {ctx.wordpiece().vocab_size}, windows of {brec['block']} tokens "
        "of the world paragraphs (documents joined by [SEP]; without the GPT's sentiment episodes), "
        f"masked LM with 15% targets (80% [MASK], 10% random, 10% kept), dynamic masks, {brec['steps']} "
        f"steps of {brec['batch']} windows ({brec['seconds']:.0f}s). Fact probe: rank all {len(cities)} "
        f"cities as the continuation of 'NAME lives in' for each of {len(people)} people (label-word "
        "scoring, plmkit.prompting).",
        result=f"GPT held-out loss {rec['dev_loss']:.2f} nats/token vs {uniform:.2f} for a uniform guess and "
        f"{rec['unigram_loss']:.2f} for token frequencies without context; "
        f"city of a person: {acc:.0%} correct vs {baseline:.0%} for always naming the most common city; "
        f"BERT held-out masked-token loss {brec['dev_loss']:.2f} vs {wp_uniform:.2f} uniform and "
        f"{brec['unigram_loss']:.2f} unigram.",
        supported=supported,
        key=f"GPT held-out loss {rec['dev_loss']:.2f} (unigram {rec['unigram_loss']:.2f}); city probe "
        f"{acc:.0%} (most common city {baseline:.0%}); BERT {brec['dev_loss']:.2f} (unigram "
        f"{brec['unigram_loss']:.2f})",
        metrics={
            "dev_loss": rec["dev_loss"],
            "uniform_loss": uniform,
            "unigram_loss": rec["unigram_loss"],
            "bert_unigram_loss": brec["unigram_loss"],
            "fact_accuracy": acc,
            "fact_majority_baseline": baseline,
            "seconds": rec["seconds"],
            "bert_dev_loss": brec["dev_loss"],
            "bert_uniform_loss": wp_uniform,
            "bert_seconds": brec["seconds"],
        },
        plots={"pretraining_loss": figure_png(fig)},
    )
