"""g. Parameter-efficient fine-tuning: full fine-tuning vs LoRA, adapters, prompt and prefix tuning."""

from __future__ import annotations

import copy

import torch

from plmkit.models.heads import SequenceClassificationHead, TaskModel
from plmkit.peft import (
    BottleneckConfig,
    LoRAConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    apply_peft,
    mark_trainable,
)
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

NAME = "peft"
TITLE = "g. PEFT: full fine-tuning vs LoRA vs adapters vs prompt and prefix tuning"
CLAIM = (
    "Training a small number of added parameters on a frozen pretrained model comes close to full "
    "fine-tuning: LoRA r=8 lands within a few points of it while training a small share of the weights "
    "(under 1% at BERT-base width)."
)
# method -> (PEFT config or None for full fine-tuning, learning rate). Frozen bases take larger steps.
METHODS = {
    "full": (None, 1e-3),
    "lora r=8": (("lora", LoRAConfig(r=8, alpha=16, targets="q_proj,v_proj")), 5e-3),
    "adapters": (("adapters", BottleneckConfig(reduction=8)), 3e-3),
    "prompt tuning": (("prompt", PromptTuningConfig(num_tokens=10)), 3e-2),
    "prefix tuning": (("prefix", PrefixTuningConfig(length=10, hidden=64)), 5e-3),
}
WITHIN = 0.03  # "a few points"


def run(ctx: Context) -> Result:
    bert, _ = ctx.pretrained_bert()
    tok = ctx.wordpiece()
    world = ctx.world
    d_model = bert.backbone.config.d_model
    train_records = make_task(world, "sentiment", "train", ctx.steps(512, 256))
    dev_records = make_task(world, "sentiment", "dev", ctx.steps(500, 200))
    train_f, dev_f = encode_sentences(tok, train_records, True), encode_sentences(tok, dev_records, True)
    steps = ctx.steps(200, 30)
    rows, metrics = [], {}
    for method, (spec, lr) in METHODS.items():
        # A linear classifier on the mean of the last hidden states: tiny, so it hardly moves the shares,
        # and every method trains the same one.
        torch.manual_seed(ctx.seed + 7)
        head = SequenceClassificationHead(d_model, 2, pooling="mean", activation=None, dropout=0.0)
        model = TaskModel(copy.deepcopy(bert.backbone), head)
        if spec is not None:
            model = apply_peft(model, spec[0], spec[1])
            mark_trainable(model)
            for p in model.head.parameters():
                p.requires_grad_(True)
        seen, total, trainable = set(), 0, 0
        for p in model.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
                trainable += p.numel() if p.requires_grad else 0
        acc, seconds = finetune_classifier(ctx, model, train_f, dev_f, tok.pad_id, steps, lr)
        metrics[method] = {"accuracy": acc, "trainable_pct": 100 * trainable / total, "seconds": seconds}
        rows.append([method, f"{trainable:,}", f"{100 * trainable / total:.2f}%", acc, f"{seconds:.1f}"])
    baseline = majority_baseline([r["label"] for r in dev_records])
    fig, ax = new_figure()
    names = list(metrics)
    ax.bar(names, [metrics[m]["accuracy"] for m in names], color="#4c72b0")
    for i, m in enumerate(names):
        ax.text(
            i, metrics[m]["accuracy"] + 0.01, f"{metrics[m]['trainable_pct']:.1f}%", ha="center", fontsize=8
        )
    ax.axhline(baseline, color="grey", linestyle="--", label=f"majority class {baseline:.2f}")
    ax.set_ylim(0, 1)
    ax.set_ylabel("dev accuracy (label: % of weights trained)")
    ax.set_title("Sentiment with the pretrained BERT")
    ax.legend()
    ax.tick_params(axis="x", labelsize=8)
    full, lora = metrics["full"], metrics["lora r=8"]
    gap = full["accuracy"] - lora["accuracy"]
    # Also demand that fine-tuning learned something: equal scores at the majority baseline prove nothing.
    supported = gap <= WITHIN and full["accuracy"] > baseline + 0.1
    # LoRA r on q and v adds 2 * 2 * r * d weights per layer to about 12 d^2: a share near 2.7 / d of the
    # blocks, so below 1% needs a width of about 256 or more (BERT-base: d = 768, 0.3%).
    width_note = (
        "below 1% as in the lecture"
        if lora["trainable_pct"] < 1
        else f"not below 1%: at width d={d_model} LoRA r=8 on q,v is 2*2*8*d weights per layer against "
        "about 12*d*d, so under 1% needs d of about 256 or more (BERT-base, d=768: about 0.3%)"
    )
    return Result(
        NAME,
        TITLE,
        CLAIM,
        setup="The BERT of experiment b with a linear classifier on the mean of its last hidden states; "
        f"{len(train_records)} labelled reviews, {steps} steps of 16 reviews, "
        f"dev set of {len(dev_records)}. Methods from plmkit.peft (apply_peft + mark_trainable; the "
        "classifier trains in every method); 'a few points' is taken as at most "
        f"{WITHIN * 100:.0f} points.",
        result=f"full {full['accuracy']:.0%} ({full['trainable_pct']:.0f}% trained, {full['seconds']:.0f}s), "
        f"LoRA r=8 {lora['accuracy']:.0%} ({lora['trainable_pct']:.2f}% trained, {lora['seconds']:.0f}s; "
        f"{gap * 100:+.1f} points behind full; share {width_note}); "
        + ", ".join(
            f"{m} {v['accuracy']:.0%} ({v['trainable_pct']:.2f}%)"
            for m, v in metrics.items()
            if m not in ("full", "lora r=8")
        )
        + f"; majority class {baseline:.0%}.",
        supported=supported,
        metrics={**metrics, "majority_baseline": baseline},
        tables=[table(["method", "trainable", "share", "dev accuracy", "seconds"], rows)],
        plots={"peft": figure_png(fig)},
    )
