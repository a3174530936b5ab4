"""c. Transfer: the pretrained model vs the same architecture from random initialization, few labels."""

from __future__ import annotations

import copy

import torch

from plmkit.models.gpt import GPT2Model
from plmkit.models.heads import SequenceClassificationHead, TaskModel
from plmkit.tour.common import (
    Context,
    Result,
    encode_sentences,
    figure_png,
    finetune_classifier,
    majority_baseline,
    new_figure,
    table,
)
from plmkit.world import make_task

NAME = "transfer"
TITLE = "c. Pretrain, then fine-tune: pretrained vs random initialization with few labels"
CLAIM = (
    "With few labelled examples, starting from pretrained weights beats training the same architecture "
    "from random initialization by a clear margin; the gap shrinks as labels grow."
)
LABELS = (32, 128, 512)


def run(ctx: Context) -> Result:
    gpt, _ = ctx.pretrained_gpt()
    tok = ctx.bpe()
    world = ctx.world
    dev_records = make_task(world, "sentiment", "dev", ctx.steps(500, 200))
    dev_f = encode_sentences(tok, dev_records, False)
    all_train = make_task(world, "sentiment", "train")
    steps = ctx.steps(120, 40)
    scores: dict[str, dict[int, float]] = {"pretrained": {}, "random init": {}}
    for n in LABELS:
        train_f = encode_sentences(tok, all_train[:n], False)
        for init in scores:
            if init == "pretrained":
                backbone = copy.deepcopy(gpt.backbone)
            else:
                torch.manual_seed(ctx.seed)
                backbone = GPT2Model(gpt.config)
            head = SequenceClassificationHead(
                gpt.config.d_model, 2, pooling="last", activation=None, dropout=0.0
            )
            acc, _ = finetune_classifier(
                ctx, TaskModel(backbone, head), train_f, dev_f, tok.eos_id, steps, 1e-3
            )
            scores[init][n] = acc
    baseline = majority_baseline([r["label"] for r in dev_records])
    fig, ax = new_figure()
    for init, by_n in scores.items():
        ax.plot(LABELS, [by_n[n] for n in LABELS], marker="o", label=init)
    ax.axhline(baseline, color="grey", linestyle="--", label=f"majority class {baseline:.2f}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(LABELS, [str(n) for n in LABELS])
    ax.set_ylim(0, 1)
    ax.set_xlabel("labelled training examples")
    ax.set_ylabel("dev accuracy (sentiment)")
    ax.set_title("Transfer from pretraining")
    ax.legend()
    gaps = {n: scores["pretrained"][n] - scores["random init"][n] for n in LABELS}
    supported = gaps[LABELS[0]] > 0.05 and gaps[LABELS[1]] > 0.05
    return Result(
        NAME,
        TITLE,
        CLAIM,
        setup="The GPT of experiment b vs the same GPT-2 configuration freshly initialized, each with a "
        f"linear classifier on the last token, fine-tuned {steps} steps on the first 32/128/512 sentiment "
        f"reviews; dev set of {len(dev_records)}. (The BERT version of this experiment is not in the "
        "tour yet.)",
        result=", ".join(
            f"{n} labels: pretrained {scores['pretrained'][n]:.0%} vs random {scores['random init'][n]:.0%}"
            for n in LABELS
        )
        + f" (majority class {baseline:.0%}).",
        supported=supported,
        metrics={"accuracy": scores, "gap": gaps, "majority_baseline": baseline},
        tables=[
            table(
                ["labels", "pretrained", "random init", "gap"],
                [[n, scores["pretrained"][n], scores["random init"][n], gaps[n]] for n in LABELS],
            )
        ],
        plots={"transfer": figure_png(fig)},
    )
