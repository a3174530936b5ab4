"""g. Parameter-efficient fine-tuning: full fine-tuning vs LoRA, adapters, prompt and prefix tuning."""

from __future__ import annotations

import copy

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
    "fine-tuning: LoRA r=8 lands within a few points of it while training a few percent of the weights "
    "or less."
)
# method -> (PEFT config or None for full fine-tuning, learning rate). Frozen bases take larger steps.
METHODS = {
    "full": (None, 1e-3),
    "lora r=8": (("lora", LoRAConfig(r=8, alpha=16, targets="q_proj,v_proj")), 5e-3),
    "adapters": (("adapters", BottleneckConfig(reduction=8)), 5e-3),
    "prompt tuning": (("prompt", PromptTuningConfig(num_tokens=10)), 3e-2),
    "prefix tuning": (("prefix", PrefixTuningConfig(length=10, hidden=64)), 5e-3),
}


def run(ctx: Context) -> Result:
    gpt, _ = ctx.pretrained_gpt()
    tok = ctx.bpe()
    world = ctx.world
    train_records = make_task(world, "sentiment", "train", ctx.steps(512, 256))
    dev_records = make_task(world, "sentiment", "dev", ctx.steps(500, 200))
    train_f, dev_f = encode_sentences(tok, train_records, False), encode_sentences(tok, dev_records, False)
    steps = ctx.steps(150, 40)
    rows, metrics = [], {}
    for method, (spec, lr) in METHODS.items():
        # The last real token sees the whole review in a causal model, so it is the sequence summary.
        head = SequenceClassificationHead(gpt.config.d_model, 2, pooling="last", activation=None, dropout=0.0)
        model = TaskModel(copy.deepcopy(gpt.backbone), head)
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
        acc, seconds = finetune_classifier(ctx, model, train_f, dev_f, tok.eos_id, steps, lr)
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
    ax.set_title("Sentiment with the pretrained GPT")
    ax.legend()
    ax.tick_params(axis="x", labelsize=8)
    full, lora = metrics["full"], metrics["lora r=8"]
    # Also demand that fine-tuning learned something: equal scores at the majority baseline prove nothing.
    supported = (
        lora["accuracy"] >= full["accuracy"] - 0.05
        and lora["trainable_pct"] < 5
        and full["accuracy"] > baseline + 0.1
    )
    return Result(
        NAME,
        TITLE,
        CLAIM,
        setup="The GPT of experiment b with a linear classifier on the last token; "
        f"{len(train_records)} labelled reviews, {steps} steps of 16 reviews, "
        f"dev set of {len(dev_records)}. Methods from plmkit.peft (apply_peft + mark_trainable; the "
        "classifier trains in every method). At this width (d=128) LoRA's share of a matrix is "
        "2r/d = 12.5%, so its share of the whole model is larger than at BERT-base width (d=768).",
        result=f"full {full['accuracy']:.0%} ({full['trainable_pct']:.0f}% trained), "
        f"LoRA {lora['accuracy']:.0%} ({lora['trainable_pct']:.2f}% trained); "
        + ", ".join(f"{m} {v['accuracy']:.0%}" for m, v in metrics.items() if m not in ("full", "lora r=8"))
        + f"; majority class {baseline:.0%}.",
        supported=supported,
        metrics={**metrics, "majority_baseline": baseline},
        tables=[table(["method", "trainable", "share", "dev accuracy", "seconds"], rows)],
        plots={"peft": figure_png(fig)},
    )
