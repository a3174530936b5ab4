"""A small T5 trained from scratch on a two-task text-to-text mixture, plmkit beside transformers.

Tasks: Multi30k "translate English to German: " (BLEU on the first `--eval` val sentences) and DialogSum
"summarize: " (ROUGE-L on a held-out last part of the dev file; the rest trains). Mixing is
examples-proportional with a cap (Raffel et al. 2020, sec. 3.5.2). Both libraries start from the same
weights (plmkit's init, exported with save_hf), see the same batches in the same order, use the same
AdamW, and alternate step by step so machine noise hits both alike. Reports seconds per step and the
scores of greedy generation for each, the ratios, and a paired bootstrap of the score differences
(the noise of the evaluation sets), so "within noise" is a number.

By default the vocabulary is a 4,000-piece unigram tokenizer trained on the run's training texts (a
from-scratch model needs no 32k vocabulary, and the 32k LM head would cost most of each step);
`--tokenizer t5` uses the real t5-small tokenizer instead.

    python bench/t5_multitask.py [--steps 500] [--seed 0] [--batch 16] [--threads 1] [--tokenizer unigram|t5]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import transformers

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import plmkit
from plmkit.data.text2text import Text2TextExample, collate_text2text, encode_examples, mix, mixing_rates
from plmkit.data.tokenizer import Tokenizer, train_tokenizer
from plmkit.metrics import bleu, rouge_l
from plmkit.models.seq2seq_generation import generate_seq2seq
from plmkit.models.t5 import T5Config, shift_right, t5_lm
from plmkit.objectives.seq2seq import seq2seq_loss

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TRANSLATE, SUMMARIZE = "translate English to German: ", "summarize: "


def lines(path: Path, n: int) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [next(f).strip() for _ in range(n)]


def load_tasks(n_train: int, n_eval: int, held_out: int) -> tuple[dict, list, list]:
    m30k = DATA / "multi30k"
    translate = [
        Text2TextExample(TRANSLATE + e, d, "translate")
        for e, d in zip(lines(m30k / "train.en.gz", n_train), lines(m30k / "train.de.gz", n_train))
    ]
    val = [
        Text2TextExample(TRANSLATE + e, d, "translate")
        for e, d in zip(lines(m30k / "val.en.gz", n_eval), lines(m30k / "val.de.gz", n_eval))
    ]
    rows = [json.loads(x) for x in (DATA / "dialogsum" / "dialogsum.dev.jsonl").read_text().splitlines()]
    dialog = [Text2TextExample(SUMMARIZE + r["dialogue"], r["summary"], "summarize") for r in rows]
    return {"translate": translate, "summarize": dialog[:-held_out]}, val, dialog[-held_out:]


def train_vocab(train_sets: dict, vocab_size: int, tmp: str) -> Tokenizer:
    """A unigram tokenizer (T5's kind) on the training sources and targets; pad 0, EOS 1 as in T5."""
    text = Path(tmp) / "train.txt"
    with text.open("w", encoding="utf-8") as f:
        for examples in train_sets.values():
            for e in examples:
                f.write(e.source.replace("\n", " ") + "\n" + e.target.replace("\n", " ") + "\n")
    special = {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"}
    return train_tokenizer([text], "unigram", vocab_size=vocab_size, special_tokens=special, split="line")


def paired_bootstrap(metric, hyps_a: list, hyps_b: list, refs: list, n: int = 300) -> float:
    """Standard deviation of metric(A) - metric(B) over resamples of the evaluation examples."""
    g = torch.Generator().manual_seed(0)
    diffs = []
    for _ in range(n):
        idx = torch.randint(len(refs), (len(refs),), generator=g).tolist()
        a, b, r = ([xs[i] for i in idx] for xs in (hyps_a, hyps_b, refs))
        diffs.append(metric(a, r) - metric(b, r))
    return statistics.stdev(diffs)


def heldout_loss(model: torch.nn.Module, is_hf: bool, tok: Tokenizer, examples: list, src_len: int,
                 tgt_len: int) -> float:
    """Teacher-forced mean target-token loss: a far less noisy comparison than scores near their floor."""
    total, count = 0.0, 0
    for i in range(0, len(examples), 32):
        feats = encode_examples(tok, examples[i : i + 32], src_len, tgt_len, where="eval")
        batch = collate_text2text(feats, 0)
        with torch.no_grad():
            if is_hf:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               labels=batch["labels"]).logits
            else:
                dec = shift_right(batch["labels"], 0, 0)
                logits = model(batch["input_ids"], batch["attention_mask"], decoder_input_ids=dec)
        loss_sum, n = seq2seq_loss(logits, batch["labels"])
        total, count = total + float(loss_sum), count + int(n)
    return total / count


def generate_all(
    model: torch.nn.Module, is_hf: bool, tok: Tokenizer, examples: list, src_len: int, new: int
) -> list[str]:
    out = []
    for i in range(0, len(examples), 32):
        batch = collate_text2text(encode_examples(tok, examples[i : i + 32], src_len, 256, where="eval"), 0)
        with torch.no_grad():
            if is_hf:
                ids = model.generate(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    max_new_tokens=new,
                    do_sample=False,
                )[:, 1:]
            else:
                ids = generate_seq2seq(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=new)
        out += [tok.decode(r.tolist(), skip_special_tokens=True) for r in ids]
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--seed", type=int, default=0, help="initialization and data order")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval", type=int, default=200)
    p.add_argument("--held_out", type=int, default=100)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--tokenizer", choices=("unigram", "t5"), default="unigram")
    p.add_argument("--vocab", type=int, default=4000)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    train_sets, val, held = load_tasks(5000, args.eval, args.held_out)
    if args.tokenizer == "t5":
        tok = Tokenizer.load(DATA / "tokenizers" / "t5")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            tok = train_vocab(train_sets, args.vocab, tmp)
    rates = mixing_rates({k: len(v) for k, v in train_sets.items()}, cap=1000)
    g = torch.Generator().manual_seed(args.seed)
    mixture = mix(train_sets, rates, args.steps * args.batch, g)
    src_len, tgt_len = 128, 48
    features = encode_examples(tok, mixture, src_len, tgt_len, where="train")  # truncates long dialogues

    cfg = T5Config(
        vocab_size=tok.vocab_size,
        d_model=128,
        d_kv=32,
        d_ff=256,
        num_layers=2,
        num_heads=4,
        dropout=0.0,
        feed_forward="gated-gelu",
        tie_embeddings=True,
        scale_decoder_outputs=True,
    )
    torch.manual_seed(args.seed)
    ours = t5_lm(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        plmkit.save_hf(ours, tmp)
        hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp, attn_implementation="sdpa")
    opts = [torch.optim.AdamW(m.parameters(), lr=args.lr) for m in (ours, hf)]
    times: list[list[float]] = [[], []]
    losses: list[list[float]] = [[], []]
    ours.train()
    hf.train()
    for step in range(args.steps):
        batch = collate_text2text(features[step * args.batch : (step + 1) * args.batch], 0)
        dec = shift_right(batch["labels"], 0, 0)
        for i, (model, opt) in enumerate(zip((ours, hf), opts)):
            start = time.perf_counter()
            if i == 0:
                logits = model(batch["input_ids"], batch["attention_mask"], decoder_input_ids=dec)
                loss_sum, n = seq2seq_loss(logits, batch["labels"])
                loss = loss_sum / n
            else:
                loss = model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    labels=batch["labels"],
                ).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times[i].append(time.perf_counter() - start)
            losses[i].append(float(loss.detach()))
        if step % 100 == 0:
            print(
                f"step {step}: loss plmkit {losses[0][-1]:.3f}  transformers {losses[1][-1]:.3f}", flush=True
            )
    ours.eval()
    hf.eval()
    refs_val, refs_held = [e.target for e in val], [e.target for e in held]
    scores, outputs, val_losses = [], [], []
    for i, model in enumerate((ours, hf)):
        start = time.perf_counter()
        translations = generate_all(model, i == 1, tok, val, src_len, 40)
        summaries = generate_all(model, i == 1, tok, held, src_len, tgt_len)
        seconds = time.perf_counter() - start
        outputs.append((translations, summaries))
        scores.append((bleu(translations, refs_val), rouge_l(summaries, refs_held), seconds))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # long dialogues are cut as in training
            val_losses.append([heldout_loss(model, i == 1, tok, xs, src_len, tgt_len) for xs in (val, held)])
    step_s = [statistics.median(t) for t in times]
    print(
        f"config: T5 v1.1-style d_model=128 layers=2+2 heads=4 d_ff=256, {args.tokenizer} vocab "
        f"{tok.vocab_size}, batch {args.batch}, {args.steps} steps, lr {args.lr}, "
        f"rates { {k: round(v, 3) for k, v in rates.items()} }, threads {args.threads}"
    )
    for name, s, sc, ls, vl in zip(("plmkit", "transformers"), step_s, scores, losses, val_losses):
        print(
            f"{name:>12}: {s * 1000:.1f} ms/step (median), train loss {statistics.mean(ls[-20:]):.3f} "
            f"(mean of last 20), held-out loss translate {vl[0]:.3f} summarize {vl[1]:.3f}, "
            f"BLEU {sc[0]:.2f}, ROUGE-L {sc[1]:.2f}, eval {sc[2]:.1f}s"
        )
    (t_a, s_a), (t_b, s_b) = outputs
    print(
        f"score difference plmkit - transformers: BLEU {scores[0][0] - scores[1][0]:+.2f} "
        f"(paired bootstrap sd {paired_bootstrap(bleu, t_a, t_b, refs_val):.2f}), "
        f"ROUGE-L {scores[0][1] - scores[1][1]:+.2f} "
        f"(sd {paired_bootstrap(rouge_l, s_a, s_b, refs_held):.2f})"
    )
    same = sum(a == b for a, b in zip(t_a + s_a, t_b + s_b))
    print(f"identical generations: {same} of {len(t_a) + len(s_a)}")
    print(f"ratio transformers/plmkit step time: {step_s[1] / step_s[0]:.2f} (>1: plmkit faster)")


if __name__ == "__main__":
    main()
