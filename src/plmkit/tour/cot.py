"""i. Chain-of-thought: step-by-step solutions vs direct answers, and self-consistency."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from plmkit import generate
from plmkit.data.batches import ShuffledBatches
from plmkit.data.tokenizer import Tokenizer, train_tokenizer
from plmkit.errors import DataError
from plmkit.models.gpt import GPT2Config, gpt2_lm
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

FULL_STEPS, QUICK_STEPS = 900, 100
BATCH = 32
LR = 3e-3
BLOCK = 128  # the longest prompt with its worked solution is about 70 problem-BPE tokens
MAX_NEW = 40  # four equations of 6 tokens and the '#### N' line
NAME = "cot"
TITLE = "i. Chain-of-thought vs direct answers, and self-consistency"
CLAIM = (
    "On multi-step arithmetic word problems, generating the intermediate steps before the answer beats "
    "answering directly, and a majority vote over several sampled solutions (self-consistency) helps further."
)


DIRECT, WORKED = "Answer:", "Solution:"
Pair = tuple[list[int], list[int]]  # (prompt ids, completion ids)
EQUATION = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)")


def worked_solution(record: dict) -> str:
    """The world's GSM8K solution reduced to its equations, one short step per sentence of the question:
    '5 - 2 = 3. 3 + 4 = 7.\\n#### 7'. Each step is a 2-operand sum within 1..20 whose first operand is the
    previous result (copied from a few tokens back) and whose second is the next number of the question,
    so a tiny model learns one small lookup per step instead of the whole computation in one pass."""
    steps = EQUATION.findall(record["answer"])
    if not steps:
        raise DataError(f"arithmetic record has no 'a + b = c' step in its answer: {record['answer']!r}")
    return " ".join(f"{a} {op} {b} = {c}." for a, op, b, c in steps) + f"\n#### {record['result']}"


def completion(record: dict, prefix: str) -> str:
    return f" {record['result']}" if prefix == DIRECT else f" {worked_solution(record)}"


def prompt(record: dict, prefix: str) -> str:
    return f"Question: {record['question']}\n{prefix}"


def problem_tokenizer(ctx: Context, records: list[dict]) -> Tokenizer:
    """A BPE trained on the training problems in both formats: with the world tokenizer of experiment a,
    numbers above 10 and the equation signs fall apart into pieces, so a step is no longer one token per
    operand; here every quantity of 1..20 is a single token."""
    path = ctx.work / "cot_problems.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    docs = [prompt(r, p) + completion(r, p) for r in records for p in (DIRECT, WORKED)]
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return train_tokenizer([path], kind="bpe", vocab_size=600)


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


def step_checks(record: dict, generated: str) -> tuple[int, int, int]:
    """(steps compared, steps with the question's operator and operand, steps whose arithmetic holds)
    between a generated solution and the gold one, step by step."""
    gold, made = EQUATION.findall(worked_solution(record)), EQUATION.findall(generated)
    pairs = list(zip(gold, made))
    operand = sum((g[1], g[2]) == (m[1], m[2]) for g, m in pairs)
    arithmetic = sum(int(m[3]) == int(m[0]) + (1 if m[1] == "+" else -1) * int(m[2]) for _, m in pairs)
    return len(pairs), operand, arithmetic


@dataclass
class CotModel:
    """The GPT experiment i trains on the word problems, with its tokenizer and training record."""

    model: nn.Module
    tok: Tokenizer
    train_set: list[dict]
    steps: int
    train_seconds: float
    losses: list[float]
    split_numbers: list[int]


def cot_model(ctx: Context) -> CotModel:
    """i's chain-of-thought GPT, trained once per Context: m (GRPO) starts from the same model."""
    return ctx.once("cot_model", lambda: _train_cot_model(ctx))


def _train_cot_model(ctx: Context) -> CotModel:
    world = ctx.world
    train_set = make_task(world, "arithmetic", "train")
    tok = problem_tokenizer(ctx, train_set)
    split_numbers = [n for n in range(1, 21) if len(tok.encode(f" {n}", add_special_tokens=False)) != 1]
    torch.manual_seed(ctx.seed)
    # A separate GPT trained on the problems only, not the world GPT of b: the claim is about the answer
    # format, and a model that never saw world prose learns the steps in fewer updates than one that
    # must first unlearn b's tokenizer and text (see docs/tour.md).
    config = GPT2Config(
        vocab_size=tok.vocab_size, max_positions=BLOCK, d_model=128, num_layers=2, num_heads=4, dropout=0.0
    )
    model = gpt2_lm(config).to(ctx.device)
    steps = ctx.steps(FULL_STEPS, QUICK_STEPS)
    start = time.perf_counter()
    trained = train(
        model,
        device_step(clm_step, ctx.device),
        ShuffledBatches(encode_problems(tok, train_set), collate_completions(tok.eos_id), BATCH, ctx.seed),
        train_config(ctx, steps, LR, "cot", progress=True),
    )
    losses = [row["loss"] for row in trained.history if "loss" in row]
    model.eval()
    return CotModel(model, tok, train_set, steps, time.perf_counter() - start, losses, split_numbers)


def run(ctx: Context) -> Result:
    world = ctx.world
    built = cot_model(ctx)
    model, tok, train_set, steps = built.model, built.tok, built.train_set, built.steps
    split_numbers, train_seconds = built.split_numbers, built.train_seconds
    model.eval()
    test = [r for r in make_task(world, "arithmetic", "test") if r["steps"] >= 2][: ctx.steps(150, 50)]
    gold = [str(r["result"]) for r in test]
    eos = tok.eos_id

    def solve(
        prefix: str, max_new: int, samples: int = 1, temperature: float = 1.0
    ) -> tuple[list[list[str | None]], list[list[str]]]:
        prompts = [tok.encode(prompt(r, prefix), add_special_tokens=False) for r in test]
        answers: list[list[str | None]] = [[] for _ in test]
        texts: list[list[str]] = [[] for _ in test]
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
                text = tok.decode([t for t in row if t != eos])
                texts[i].append(text)
                answers[i].append(extract_answer(text))
        return answers, texts

    direct_answers = [a[0] for a in solve(DIRECT, 4)[0]]
    greedy, greedy_texts = solve(WORKED, MAX_NEW)
    cot_answers = [a[0] for a in greedy]
    k = ctx.steps(5, 3)
    sampled = solve(WORKED, MAX_NEW, samples=k, temperature=0.7)[0]
    voted = [self_consistency(a) for a in sampled]
    # One sample's accuracy is averaged over the k draws the vote uses: a single draw moves by a few
    # points with the generator, which is as large as the effect being measured.
    draws = [[a[j] for a in sampled] for j in range(k)]
    checks = [step_checks(r, t[0]) for r, t in zip(test, greedy_texts)]
    compared = max(1, sum(c[0] for c in checks))
    operand_ok, arithmetic_ok = (sum(c[j] for c in checks) / compared for j in (1, 2))

    def acc(pred: list[str | None], rows: list[int] | None = None) -> float:
        idx = range(len(test)) if rows is None else rows
        return sum(pred[i] == gold[i] for i in idx) / max(1, len(idx))

    by_steps = {}
    for n in sorted({r["steps"] for r in test}):
        rows = [i for i, r in enumerate(test) if r["steps"] == n]
        by_steps[n] = {
            "direct": acc(direct_answers, rows),
            "cot": acc(cot_answers, rows),
            "one_sample": sum(acc(d, rows) for d in draws) / k,
            "self_consistency": acc(voted, rows),
            "baseline": majority_baseline([gold[i] for i in rows]),
            "n": len(rows),
        }
    scores = {
        "direct": acc(direct_answers),
        "cot_greedy": acc(cot_answers),
        "cot_one_sample": sum(acc(d) for d in draws) / k,
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
    # Thresholds fixed before measuring: 5 points over direct answers; the vote no worse than one sample
    # (on average over the draws).
    supported = (
        scores["cot_greedy"] > scores["direct"] + 0.05
        and scores["self_consistency"] >= scores["cot_one_sample"]
    )
    losses = built.losses
    return Result(
        NAME,
        TITLE,
        CLAIM,
        setup=f"A GPT (2 layers, d=128) trained from scratch {steps} steps of {BATCH} ({train_seconds:.0f}s, "
        f"loss on the completion only) on the {len(train_set)} training word problems, each once as "
        "'Question ... Answer: N' and once as 'Question ... Solution: 5 - 2 = 3. 3 + 4 = 7.\\n#### 7' (the "
        "world's solution reduced to its equations), with a BPE trained on those problems "
        f"({tok.vocab_size} tokens; quantities 1..20 that are not one token: {split_numbers or 'none'}). "
        f"The same model answers both ways. Evaluated on {len(test)} unseen problems of 2-4 steps: greedy "
        f"direct answer, greedy worked solution, one solution sampled at temperature 0.7 (accuracy averaged "
        f"over {k} draws), and the majority of those {k} sampled solutions (plmkit.generate, "
        "plmkit.prompting).",
        result=f"direct {scores['direct']:.0%}, chain-of-thought {scores['cot_greedy']:.0%}, one sampled "
        f"solution {scores['cot_one_sample']:.0%} (mean of {k} draws), self-consistency of {k} "
        f"{scores['self_consistency']:.0%} "
        f"(most common answer {baseline:.0%}); greedy steps with the right operand {operand_ok:.0%}, with "
        f"correct arithmetic {arithmetic_ok:.0%}.",
        supported=supported,
        key=f"direct {scores['direct']:.0%} vs chain-of-thought {scores['cot_greedy']:.0%}; vote of {k} "
        f"{scores['self_consistency']:.0%} vs one sample {scores['cot_one_sample']:.0%}",
        metrics={
            **scores,
            "majority_baseline": baseline,
            "by_steps": by_steps,
            "samples": k,
            "step_operand_ok": operand_ok,
            "step_arithmetic_ok": arithmetic_ok,
            "train_seconds": train_seconds,
            "final_loss": losses[-1] if losses else float("nan"),
            "split_numbers": split_numbers,
        },
        tables=[
            table(
                ["steps", "problems", "most common answer", "direct", "chain-of-thought", "one sample",
                 "self-consistency"],
                [
                    [n, v["n"], v["baseline"], v["direct"], v["cot"], v["one_sample"], v["self_consistency"]]
                    for n, v in by_steps.items()
                ],
            )
        ],
        plots={"cot": figure_png(fig)},
    )
