"""a. Tokenization: BPE and WordPiece trained on the world's text."""

from __future__ import annotations

from plmkit.tour.common import Context, Result, table

NAME = "tokenization"
TITLE = "a. Tokenization: BPE vs WordPiece"
CLAIM = (
    "Subword tokenizers learned from a corpus keep frequent words whole and split rare or unseen words into "
    "known pieces, so no word is out of vocabulary (byte-level BPE) or almost none is (WordPiece)."
)
EXAMPLES = ("Kestrel Systems", "Varportish", "unbelievably", "Zorblaxian", "The Falcon kettle is not bad.")


def run(ctx: Context) -> Result:
    docs = ctx.documents()
    held_out = [*docs[:200], "Zorblaxian ambassadors quietly renegotiated übersized contracts."]
    words = sum(len(d.split()) for d in held_out)
    rows, metrics, segmentations = [], {}, []
    for kind, tok in (("bpe", ctx.bpe()), ("wordpiece", ctx.wordpiece())):
        ids = [tok.encode(d, add_special_tokens=False) for d in held_out]
        n_tokens = sum(len(x) for x in ids)
        unk = sum(x.count(tok.unk_id) for x in ids) if kind == "wordpiece" else 0
        metrics[kind] = {"vocab_size": tok.vocab_size, "tokens_per_word": n_tokens / words, "unk_tokens": unk}
        rows.append([kind, tok.vocab_size, n_tokens / words, unk])
        for text in EXAMPLES:
            pieces = [tok.id_to_token(i) for i in tok.encode(text, add_special_tokens=False)]
            segmentations.append([kind, text, " ".join(p.replace("Ġ", "▁") for p in pieces)])
    supported = metrics["bpe"]["unk_tokens"] == 0 and metrics["bpe"]["tokens_per_word"] < 2.0
    return Result(
        NAME,
        TITLE,
        CLAIM,
        setup="BPE (byte-level) and WordPiece, vocabulary 1000, trained on "
        f"{len(docs)} world documents; "
        f"measured on {len(held_out)} documents ({words} words) including an unseen sentence.",
        result=f"BPE: {metrics['bpe']['tokens_per_word']:.2f} tokens/word, "
        f"{metrics['bpe']['unk_tokens']} unknown; "
        f"WordPiece: {metrics['wordpiece']['tokens_per_word']:.2f} tokens/word, "
        f"{metrics['wordpiece']['unk_tokens']} unknown.",
        supported=supported,
        key=f"BPE {metrics['bpe']['unk_tokens']} unknown tokens, {metrics['bpe']['tokens_per_word']:.2f} "
        f"tokens/word; WordPiece {metrics['wordpiece']['unk_tokens']} unknown",
        metrics=metrics,
        tables=[
            table(["tokenizer", "vocab", "tokens/word", "unknown tokens"], rows),
            table(["tokenizer", "text", "pieces"], segmentations),
        ],
    )
