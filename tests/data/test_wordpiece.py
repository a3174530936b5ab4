from __future__ import annotations

import os
import subprocess
import sys

from shared_paths import require_data
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import models, trainers

from plmkit.data.tokenizer import _set_bert, train_tokenizer
from plmkit.data.wordpiece import learn_wordpiece_vocab

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# The corpus of the Hugging Face course's WordPiece chapter.
COUNTS = {"hug": 10, "pug": 5, "pun": 12, "bun": 4, "hugs": 5}
ALPHABET = ["b", "g", "h", "n", "p", "s", "u", "##g", "##n", "##s", "##u"]


def test_merges_by_pair_frequency_worked_by_hand():
    vocab = learn_wordpiece_vocab(COUNTS, vocab_size=100, special_tokens=SPECIALS, min_frequency=1)
    # ##u##g 20, ##u##n 16, h##ug 15, p##un 12; then p##ug and hug##s tie at 5 and the lower ids go
    # first (p=9 < hug=18); b##un 4 last. Nothing is left to merge, so the vocabulary stops short of 100.
    assert vocab == [*SPECIALS, *ALPHABET, "##ug", "##un", "hug", "pun", "pug", "hugs", "bun"]


def test_min_frequency_and_vocab_size_stop_the_merges():
    assert learn_wordpiece_vocab(COUNTS, 100, SPECIALS, min_frequency=5)[-2:] == ["pug", "hugs"]
    assert learn_wordpiece_vocab(COUNTS, 100, SPECIALS, min_frequency=16)[-1] == "##un"
    assert len(learn_wordpiece_vocab(COUNTS, 19, SPECIALS, min_frequency=1)) == 19
    # The alphabet is never cut, even when it alone exceeds vocab_size.
    assert learn_wordpiece_vocab(COUNTS, 3, SPECIALS) == [*SPECIALS, *ALPHABET]


def test_same_vocabulary_as_the_tokenizers_trainer_where_no_tie_decides(tmp_path):
    text = require_data("tinystories", "tinystories_val.txt").read_text(encoding="utf-8")[:150_000]
    corpus = tmp_path / "stories.txt"
    corpus.write_text(text, encoding="utf-8")
    ours = train_tokenizer([corpus], kind="wordpiece", vocab_size=500, lowercase=True)
    backend = RustTokenizer(models.WordPiece(unk_token="[UNK]"))
    _set_bert(backend, lowercase=True)
    trainer = trainers.WordPieceTrainer(vocab_size=500, min_frequency=2, special_tokens=SPECIALS,
                                        continuing_subword_prefix="##", show_progress=False)
    backend.train_from_iterator(text.split("\n\n"), trainer=trainer)
    theirs = backend.get_vocab()
    assert set(ours.backend.get_vocab()) == set(theirs)
    # Special tokens and characters have the same ids; they number `##c` pieces in hash order, which also
    # reorders merges of equal count, where ours are numbered by code point.
    pieces = [t for t in theirs if t in SPECIALS or len(t) == 1]
    assert len(pieces) == 5 + 38
    assert {t: ours.token_to_id(t) for t in pieces} == {t: theirs[t] for t in pieces}
    sample = "once upon a time, a little butterfly hurried to the pumpkin."
    assert ours.decode(ours.encode(sample)) == sample


_TRAIN = """
import sys
from plmkit.data.tokenizer import train_tokenizer
tok = train_tokenizer([sys.argv[1]], kind="wordpiece", vocab_size=1200)
print(tok.fingerprint(), tok.encode("Once upon a time there was a shiny kestrel."))
"""


def test_identical_ids_in_every_process(tmp_path):
    corpus = tmp_path / "stories.txt"
    text = require_data("tinystories", "tinystories_val.txt").read_text(encoding="utf-8")[:400_000]
    corpus.write_text(text, encoding="utf-8")
    runs = set()
    for hash_seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", _TRAIN, str(corpus)], env=env, check=True,
                             capture_output=True, text=True)
        runs.add(out.stdout)
    assert len(runs) == 1, runs
