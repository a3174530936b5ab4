"""i. Chain-of-thought: step-by-step solutions vs direct answers, and self-consistency."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch

from plmkit import generate
from plmkit.data.batches import ShuffledBatches
from plmkit.data.tokenizer import Tokenizer
from plmkit.prompting import extract_answer, self_consistency
from plmkit.tour.common import (
    Context,
    Result,
    clm_step,
    device_step,
    figure_png,
    majority_baseline,
    new_figure,
    table,
    train_config,
)
from plmkit.training import train
from plmkit.world import make_task

FULL_STEPS, QUICK_STEPS = 400, 60
LR = 1e-3
NAME = "cot"
TITLE = "i. Chain-of-thought vs direct answers, and self-consistency"
CLAIM = (
    "On multi-step arithmetic word problems, generating the intermediate steps before the answer beats "
    "answering directly, and a majority vote over several sampled solutions (self-consistency) helps further."
)


DIRECT, WORKED = "Answer:", "Solution:"
Pair = tuple[list[int], list[int]]  # (prompt ids, completion ids)


def completion(record: dict, prefix: str) -> str:
    return f" {record['result']}" if prefix == DIRECT else f" {record['answer']}"


def prompt(record: dict, prefix: str) -> str:
    return f"Question: {record['question']}\n{prefix}"


def encode_problems(tok: Tokenizer, records: list[dict]) -> list[Pair]:
    """Every problem twice, as (prompt ids, completion ids + end of text): once answered directly and
    once with its worked solution, so the two formats differ only in the steps shown."""
    pairs = [(prompt(r, prefix), completion(r, prefix)) for r in records for prefix in (DIRECT, WORKED)]
    prompts = tok.encode_batch([p for p, _ in pairs], add_special_tokens=False)
    completions = tok.encode_batch([c for _, c in pairs], add_special_tokens=False)
    return [(p, c + [tok.eos_id]) for p, c in zip(prompts, completions)]


def collate_completions(pad_id: int) -> Callable[[list[Pair]], dict[str, torch.Tensor]]:
    """Right-padded (B, T) inputs and shifted labels; prompt and padding positions are not targets, so the
    whole loss is on writing the answer (Nye et al. 2021, scratchpads)."""

    def collate(rows: list[Pair]) -> dict[str, torch.Tensor]:
        width = max(len(p) + len(c) for p, c in rows) - 1
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (p, c) in enumerate(rows):
            ids = torch.tensor(p + c)
            n = len(ids) - 1
            input_ids[i, :n] = ids[:-1]
            labels[i, :n] = ids[1:]
            labels[i, : len(p) - 1] = -100
        return {"input_ids": input_ids, "labels": labels}

    return collate


def run(ctx: Context) -> Result:
    gpt, _ = ctx.pretrained_gpt()
    tok = ctx.bpe()
    world = ctx.world
    train_set = make_task(world, "arithmetic", "train")
    model = copy.deepcopy(gpt)
    steps = ctx.steps(FULL_STEPS, QUICK_STEPS)
    start = time.perf_counter()
    train(
        model,
        device_step(clm_step, ctx.device),
        ShuffledBatches(encode_problems(tok, train_set), collate_completions(tok.eos_id), 16, ctx.seed),
        train_config(ctx, steps, LR, "cot", progress=True),
    )
    train_seconds = time.perf_counter() - start
    model.eval()
    test = [r for r in make_task(world, "arithmetic", "test") if r["steps"] >= 2][: ctx.steps(150, 50)]
    gold = [str(r["result"]) for r in test]
    eos = tok.eos_id

    def answers(
        prefix: str, max_new: int, samples: int = 1, temperature: float = 1.0
    ) -> list[list[str | None]]:
        prompts = [tok.encode(prompt(r, prefix), add_special_tokens=False) for r in test]
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

    direct_answers = [a[0] for a in answers(DIRECT, 4)]
    # A worked solution of 4 steps, each restating its sentence, is about 80 tokens.
    cot_answers = [a[0] for a in answers(WORKED, 96)]
    k = ctx.steps(5, 3)
    sampled = answers(WORKED, 96, samples=k, temperature=0.7)
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
        setup=f"The GPT of experiment b (pretrained on world text), fine-tuned {steps} steps of 16 "
        f"({train_seconds:.0f}s, loss on the completion only) on {len(train_set)} world word problems, each "
        "once as 'Question ... Answer: N' and once as 'Question ... Solution: <steps> #### N', where "
        "every step restates its sentence ('She loses 2: 5 - 2 = 3.'). Evaluated on "
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
