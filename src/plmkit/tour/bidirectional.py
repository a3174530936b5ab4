"""d. Bidirectional vs left-to-right: a tiny BERT (MLM) and a tiny GPT (causal LM) of the same size, trained
on the same world text for the same steps, fill a blank in the middle of a sentence; only GPT generates.

The tiny BERT, its windows and sizes are the tour's shared ones (`plmkit.tour.common`), re-exported here
for experiments e and f.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from plmkit.data.tokenizer import Tokenizer
from plmkit.models.generation import generate
from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.objectives.clm import causal_lm_loss
from plmkit.tour.common import (
    Context,
    Result,
    encoder_sizes,
    encoder_windows,
    figure_png,
    majority_baseline,
    new_figure,
    pretrain_encoder,
    table,
)
from plmkit.training import StepOutput

NAME = "bidirectional"
TITLE = "d. Bidirectional (BERT) vs left-to-right (GPT) of equal size"
CLAIM = (
    "A bidirectional encoder fills a blank in the middle of a sentence better than a left-to-right model "
    "of the same size predicting from the words before the blank, because it also reads the words after "
    "it; the left-to-right model in exchange generates text, which BERT cannot do."
)


# --- d: the experiment ----------------------------------------------------------------------------------


def gpt_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
    ids = batch["input_ids"]
    loss_sum, n = causal_lm_loss(model(ids[:, :-1]), ids[:, 1:])
    return StepOutput(loss_sum=loss_sum, num_targets=n)


def pretrained_gpt_wordpiece(ctx: Context) -> tuple[nn.Module, dict[str, Any]]:
    """A GPT-2 of BERT's width, depth, heads and vocabulary, trained on the same windows."""
    s = encoder_sizes(ctx)
    tok = ctx.wordpiece()
    train_windows, _ = encoder_windows(ctx)
    torch.manual_seed(ctx.seed)
    config = GPT2Config(
        vocab_size=tok.vocab_size,
        max_positions=128,  # as BERT: room for the longest held-out sentence
        d_model=s.d_model,
        num_layers=s.num_layers,
        num_heads=s.num_heads,
        dropout=0.0,
    )
    model = gpt2_lm(config)
    return model, pretrain_encoder(ctx, model, gpt_step, list(train_windows), "gpt-wordpiece")


@dataclass
class Blank:
    left: list[int]  # token ids before the blank
    answer: int  # the blanked word: a single WordPiece token
    right: list[int]  # token ids after it
    candidates: list[int]  # answer first, then distractors


def make_blanks(ctx: Context, tok: Tokenizer, n: int) -> list[Blank]:
    """Blanks in held-out world sentences: one whole word (a single token, letters only) with at least two
    tokens on each side, and four distractor words drawn by frequency from the same held-out text."""
    rng = random.Random(f"blanks-{ctx.seed}")
    docs = ctx.world.corpus(max(200, n), seed=ctx.seed + 7919)  # paragraphs the models never saw
    sentences = [s.strip().rstrip(".") + "." for d in docs for s in d.split(". ") if len(s.split()) >= 6]
    rng.shuffle(sentences)
    encoded = [tok.encode(s, add_special_tokens=False) for s in sentences]

    def is_word(i: int) -> bool:
        piece = tok.id_to_token(i) or ""
        return piece.isalpha() and not piece.startswith("##")

    def whole(ids: list[int], k: int) -> bool:  # a word that the next piece does not continue
        continued = k + 1 < len(ids) and (tok.id_to_token(ids[k + 1]) or "").startswith("##")
        return is_word(ids[k]) and not continued

    pool = [i for ids in encoded for k, i in enumerate(ids) if whole(ids, k)]
    blanks = []
    for ids in encoded:
        spots = [k for k in range(2, len(ids) - 2) if whole(ids, k)]
        if not spots:
            continue
        k = rng.choice(spots)
        distractors: list[int] = []
        while len(distractors) < 4:
            word = rng.choice(pool)
            if word != ids[k] and word not in distractors:
                distractors.append(word)
        blanks.append(Blank(ids[:k], ids[k], ids[k + 1 :], [ids[k], *distractors]))
        if len(blanks) == n:
            break
    return blanks


@torch.no_grad()
def bert_blank_logprobs(model: nn.Module, tok: Tokenizer, blanks: list[Blank], device: str) -> torch.Tensor:
    """log p(token at the [MASK]) over the vocabulary, reading both sides: (N, V)."""
    rows = [[tok.cls_id, *b.left, tok.mask_id, *b.right, tok.sep_id] for b in blanks]
    out = []
    for i in range(0, len(rows), 64):
        chunk = rows[i : i + 64]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), tok.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(chunk):
            ids[r, : len(row)], mask[r, : len(row)] = torch.tensor(row), 1
        logits = model(ids.to(device), mask.to(device)).float().log_softmax(-1).cpu()  # (B, T, V)
        where = (ids == tok.mask_id).nonzero()
        out.append(logits[where[:, 0], where[:, 1]])
    return torch.cat(out)


@torch.no_grad()
def gpt_token_logprobs(model: nn.Module, rows: list[list[int]], device: str) -> list[torch.Tensor]:
    """log p(token t | tokens before it) for t = 1.. of each row: one (len - 1,) tensor per row."""
    out = []
    for i in range(0, len(rows), 64):
        chunk = rows[i : i + 64]
        width = max(map(len, chunk))
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, row in enumerate(chunk):
            ids[r, : len(row)] = torch.tensor(row)
        logp = model(ids.to(device)).float().log_softmax(-1).cpu()  # (B, T, V); right padding is never read
        picked = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)
        out += [picked[r, : len(row) - 1] for r, row in enumerate(chunk)]
    return out


def gpt_left_logprobs(model: nn.Module, tok: Tokenizer, blanks: list[Blank], device: str) -> torch.Tensor:
    """log p(next token | [SEP] + words before the blank) over the vocabulary: (N, V)."""
    out = []
    with torch.no_grad():
        for b in blanks:
            ids = torch.tensor([[tok.sep_id, *b.left]], device=device)
            out.append(model(ids)[0, -1].float().log_softmax(-1).cpu())
    return torch.stack(out)


def gpt_sentence_scores(model: nn.Module, tok: Tokenizer, blanks: list[Blank], device: str) -> torch.Tensor:
    """log p(whole sentence) with each candidate in the blank: (N, 5), one forward pass per candidate."""
    rows = [[tok.sep_id, *b.left, c, *b.right] for b in blanks for c in b.candidates]
    sums = torch.stack([lp.sum() for lp in gpt_token_logprobs(model, rows, device)])
    return sums.view(len(blanks), -1)


def heldout_loss(model: nn.Module, windows: torch.Tensor, device: str) -> float:
    sums = [lp.sum() for lp in gpt_token_logprobs(model, windows.tolist(), device)]
    return -float(torch.stack(sums).sum()) / (windows.shape[0] * (windows.shape[1] - 1))


def run(ctx: Context) -> Result:
    tok = ctx.wordpiece()
    s = encoder_sizes(ctx)
    bert, bert_rec = ctx.pretrained_bert()
    gpt, gpt_rec = pretrained_gpt_wordpiece(ctx)
    blanks = make_blanks(ctx, tok, ctx.steps(300, 100))
    answers = torch.tensor([b.answer for b in blanks])
    cands = torch.tensor([b.candidates for b in blanks])  # (N, 5), answer in column 0
    bert_lp = bert_blank_logprobs(bert, tok, blanks, ctx.device)
    left_lp = gpt_left_logprobs(gpt, tok, blanks, ctx.device)
    full = gpt_sentence_scores(gpt, tok, blanks, ctx.device)
    bert_name, left_name, full_name = (
        "BERT: [MASK] at the blank, both sides",
        "GPT: next token after the left side",
        "GPT: likelihood of each full sentence (5 passes)",
    )
    top1 = {
        bert_name: float((bert_lp.argmax(-1) == answers).float().mean()),
        left_name: float((left_lp.argmax(-1) == answers).float().mean()),
    }
    of5 = {
        bert_name: float((bert_lp.gather(1, cands).argmax(-1) == 0).float().mean()),
        left_name: float((left_lp.gather(1, cands).argmax(-1) == 0).float().mean()),
        full_name: float((full.argmax(-1) == 0).float().mean()),
    }
    # Where reading the right side should matter most: the blanks the left side alone gets wrong.
    left_wrong = left_lp.argmax(-1) != answers
    bert_where_left_wrong = float((bert_lp.argmax(-1) == answers)[left_wrong].float().mean())
    # The "majority" of a blank: always answering the held-out text's most common blanked word.
    baseline = majority_baseline(answers.tolist())
    _, dev_windows = encoder_windows(ctx)
    gpt_loss = heldout_loss(gpt, dev_windows, ctx.device)
    first_sentence = ctx.world.paragraph(random.Random(ctx.seed)).split(". ")[0]
    prompt = tok.encode(first_sentence, add_special_tokens=False)
    new = generate(gpt, [[tok.sep_id, *prompt[:6]]], max_new_tokens=20)
    sample = tok.decode(prompt[:6]) + " → " + tok.decode(new[0].tolist())
    gap = top1[bert_name] - top1[left_name]
    supported = gap > 0.05 and of5[bert_name] > of5[left_name]
    fig, ax = new_figure()
    names = list(of5)
    ax.bar(
        [0, 1], [top1[n] for n in names[:2]], width=0.35, label="top-1 over the vocabulary", color="#4c72b0"
    )
    ax.bar(
        [0.35, 1.35, 2.35], [of5[n] for n in names], width=0.35, label="1 of 5 candidates", color="#dd8452"
    )
    ax.axhline(0.2, color="grey", linestyle="--", label="chance among 5")
    ax.set_xticks([0.17, 1.17, 2.35], ["BERT\n(both sides)", "GPT\n(left only)", "GPT\n(5 full sentences)"])
    ax.set_ylim(0, 1)
    ax.set_ylabel("blank filled correctly")
    ax.set_title("Filling a blank in the middle of a held-out sentence")
    ax.legend(fontsize=8)
    return Result(
        NAME,
        TITLE,
        CLAIM,
        setup=f"BERT (MLM, 80/10/10) and GPT-2 (causal LM), both d={s.d_model}, {s.num_layers} layers, "
        f"{s.num_heads} heads, the world WordPiece vocabulary ({tok.vocab_size}), {s.steps} steps of "
        f"{s.batch} windows of {s.block} tokens from the same world text ({bert_rec['params']:,} vs "
        f"{gpt_rec['params']:,} parameters). {len(blanks)} blanks: one whole word in the middle of a "
        "held-out sentence. BERT reads the sentence with [MASK] at the blank. GPT is measured two ways: "
        "predicting the blank from the words before it (what a left-to-right model sees at that point), "
        "and scoring each of 5 candidate words (the answer and 4 frequent words of the same text) by the "
        "likelihood of the whole sentence, which uses the right side at the price of one forward pass per "
        "candidate and a candidate list.",
        result=f"top-1 over the vocabulary: BERT {top1[bert_name]:.0%} vs GPT left-to-right "
        f"{top1[left_name]:.0%} (always the most common blanked word: {baseline:.0%}); on the "
        f"{int(left_wrong.sum())} blanks GPT gets wrong from the left side, BERT fills "
        f"{bert_where_left_wrong:.0%}; among 5 candidates: "
        + f"BERT {of5[bert_name]:.0%}, GPT left-to-right {of5[left_name]:.0%}, GPT scoring the 5 full "
        f"sentences {of5[full_name]:.0%} (chance 20%). Generation: GPT's held-out perplexity "
        f"{math.exp(gpt_loss):.1f} (loss {gpt_loss:.2f} nats/token); BERT has no left-to-right "
        "distribution to sample from, and its masked-token loss is not a perplexity (it sees both "
        "sides), so no BERT number is given."
        + (
            ""
            if supported
            else " At equal steps BERT is the less trained model: its MLM loss learns from the ~15% masked "
            f"tokens of a window (final training loss {bert_rec['curve'][-1][1]:.2f}), GPT's from every "
            f"token ({gpt_rec['curve'][-1][1]:.2f})."
        ),
        supported=supported,
        key=f"blank top-1: BERT {top1[bert_name]:.0%} vs GPT left-to-right {top1[left_name]:.0%}; 1 of 5: "
        f"{of5[bert_name]:.0%} vs {of5[left_name]:.0%}",
        metrics={
            "top1": top1,
            "of5": of5,
            "majority_baseline": baseline,
            "bert_top1_where_gpt_left_wrong": bert_where_left_wrong,
            "chance_of5": 0.2,
            "gpt_heldout_loss": gpt_loss,
            "gpt_perplexity": math.exp(gpt_loss),
            "bert_params": bert_rec["params"],
            "gpt_params": gpt_rec["params"],
            "pretrain_seconds": {"bert": bert_rec["seconds"], "gpt": gpt_rec["seconds"]},
            "gpt_sample": sample,
        },
        tables=[
            table(
                ["model, how it fills the blank", "top-1 over vocabulary", "1 of 5 candidates"],
                [[k, top1.get(k, "n/a"), v] for k, v in of5.items()],
            ),
            table(["GPT continuation (greedy) of a world sentence"], [[sample.replace("|", "/")]]),
        ],
        plots={"bidirectional": figure_png(fig)},
    )
