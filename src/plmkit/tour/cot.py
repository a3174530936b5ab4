"""i. Chain-of-thought: step-by-step solutions vs direct answers, and self-consistency."""

from __future__ import annotations

import time

import torch

from plmkit import generate
from plmkit.data.batches import ShuffledBatches
from plmkit.models.gpt import gpt2_lm
from plmkit.prompting import extract_answer, self_consistency
from plmkit.tour.common import (
    Context,
    Result,
    clm_step,
    collate_windows,
    device_step,
    figure_png,
    gpt_config,
    majority_baseline,
    new_figure,
    pack,
    table,
    train_config,
)
from plmkit.training import train
from plmkit.world import make_task

NAME = "cot"
TITLE = "i. Chain-of-thought vs direct answers, and self-consistency"
CLAIM = (
    "On multi-step arithmetic word problems, generating the intermediate steps before the answer beats "
    "answering directly, and a majority vote over several sampled solutions (self-consistency) helps further."
)


def direct(record: dict) -> str:
    return f"Question: {record['question']}\nAnswer: {record['result']}"


def worked(record: dict) -> str:
    return f"Question: {record['question']}\nSolution: {record['answer']}"


def run(ctx: Context) -> Result:
    tok = ctx.bpe()
    world = ctx.world
    train_set = make_task(world, "arithmetic", "train")
    # The same problems are seen in both formats, so the two prompts differ only in the steps shown.
    docs = [direct(r) for r in train_set] + [worked(r) for r in train_set]
    block = 128
    windows = pack(tok, docs, block)
    torch.manual_seed(ctx.seed + 1)
    model = gpt2_lm(gpt_config(tok.vocab_size, ctx.quick, block)).to(ctx.device)
    steps = ctx.steps(500, 150)
    start = time.perf_counter()
    train(
        model,
        device_step(clm_step, ctx.device),
        ShuffledBatches(windows, collate_windows, 8, ctx.seed),
        train_config(ctx, steps, 3e-3, "cot", progress=True),
    )
    train_seconds = time.perf_counter() - start
    model.eval()
    test = [r for r in make_task(world, "arithmetic", "test") if r["steps"] >= 2][: ctx.steps(150, 50)]
    gold = [str(r["result"]) for r in test]
    eos = tok.eos_id

    def answers(
        prefix: str, max_new: int, samples: int = 1, temperature: float = 1.0
    ) -> list[list[str | None]]:
        prompts = [tok.encode(f"Question: {r['question']}\n{prefix}", add_special_tokens=False) for r in test]
        outs: list[list[str | None]] = [[] for _ in test]
        gen = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
        for _ in range(samples):
            new = generate(
                model,
                prompts,
                max_new_tokens=max_new,
                eos_token_id=eos,
                pad_token_id=eos,
                do_sample=samples > 1,
                temperature=temperature,
                generator=gen,
            )
            for i, row in enumerate(new.tolist()):
                outs[i].append(extract_answer(tok.decode([t for t in row if t != eos])))
        return outs

    direct_answers = [a[0] for a in answers("Answer:", 4)]
    cot_answers = [a[0] for a in answers("Solution:", 64)]
    k = ctx.steps(5, 3)
    sampled = answers("Solution:", 64, samples=k, temperature=0.7)
    voted = [self_consistency(a) for a in sampled]
    single_sample = [a[0] for a in sampled]

    def acc(pred: list[str | None], rows: list[int] | None = None) -> float:
        idx = range(len(test)) if rows is None else rows
        return sum(pred[i] == gold[i] for i in idx) / max(1, len(idx))

    by_steps = {}
    for n in sorted({r["steps"] for r in test}):
        rows = [i for i, r in enumerate(test) if r["steps"] == n]
        by_steps[n] = {
            "direct": acc(direct_answers, rows),
            "cot": acc(cot_answers, rows),
            "self_consistency": acc(voted, rows),
            "n": len(rows),
        }
    scores = {
        "direct": acc(direct_answers),
        "cot_greedy": acc(cot_answers),
        "cot_one_sample": acc(single_sample),
        "self_consistency": acc(voted),
    }
    baseline = majority_baseline(gold)
    fig, ax = new_figure()
    labels = list(scores)
    ax.bar(labels, [scores[x] for x in labels], color=["#999", "#4c72b0", "#8fb0e0", "#2a9d8f"])
    ax.axhline(baseline, color="grey", linestyle="--", label=f"most common answer {baseline:.2f}")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Multi-step problems (2-4 steps), self-consistency over {k} samples")
    ax.legend()
    supported = (
        scores["cot_greedy"] > scores["direct"] + 0.05
        and scores["self_consistency"] >= scores["cot_one_sample"]
    )
    return Result(
        NAME,
        TITLE,
        CLAIM,
        setup=f"A fresh GPT ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters) trained "
        f"{steps} steps ({train_seconds:.0f}s) on {len(train_set)} world word problems, each once as "
        "'Question ... Answer: N' and once as 'Question ... Solution: <steps> #### N'. Evaluated on "
        f"{len(test)} unseen problems of 2-4 steps: greedy direct answer, greedy worked solution, and the "
        f"majority of {k} solutions sampled at temperature 0.7 (plmkit.generate, plmkit.prompting).",
        result=f"direct {scores['direct']:.0%}, chain-of-thought {scores['cot_greedy']:.0%}, one sampled "
        f"solution {scores['cot_one_sample']:.0%}, self-consistency of {k} {scores['self_consistency']:.0%} "
        f"(most common answer {baseline:.0%}).",
        supported=supported,
        metrics={**scores, "majority_baseline": baseline, "by_steps": by_steps, "samples": k},
        tables=[
            table(
                ["steps", "problems", "direct", "chain-of-thought", "self-consistency"],
                [[n, v["n"], v["direct"], v["cot"], v["self_consistency"]] for n, v in by_steps.items()],
            )
        ],
        plots={"cot": figure_png(fig)},
    )
