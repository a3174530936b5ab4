"""The tour's own data plumbing: encoder windows, tagging alignment, completion-only labels, --threads."""

import math
from pathlib import Path

import pytest
import torch

from plmkit.cli import main
from plmkit.tour import tokenization
from plmkit.tour.common import Context, masking_config, pack_documents, unigram_entropy
from plmkit.tour.cot import DIRECT, WORKED, collate_completions, encode_problems
from plmkit.tour.transfer import IGNORE, encode_tagged
from plmkit.world import TAGS, World, make_task


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    ctx = Context(seed=0, quick=True, work=Path(tmp_path_factory.mktemp("tour")), log=lambda m: None)
    ctx.cache["documents"] = World(0).corpus(200)
    path = ctx.work / "world_corpus.txt"
    path.write_text("\n\n".join(ctx.cache["documents"]) + "\n", encoding="utf-8")
    ctx.cache["corpus_file"] = path
    return ctx


def test_encoder_windows_start_with_cls_and_keep_every_token_in_order(ctx):
    tok = ctx.wordpiece()
    docs = ctx.documents()[:40]
    windows = pack_documents(tok, docs, 32)
    assert windows and all(len(w) == 32 and w[0] == tok.cls_id for w in windows)
    stream = [i for d in docs for i in tok.encode(d, add_special_tokens=False) + [tok.sep_id]]
    joined = [i for w in windows for i in w[1:]]
    assert joined == stream[: len(joined)] and len(stream) - len(joined) < 31
    masking = masking_config(tok)
    assert {tok.cls_id, tok.sep_id, tok.mask_id, tok.pad_id} <= set(masking.special_ids)
    assert (masking.mask_fraction, masking.random_fraction, masking.mlm_probability) == (0.8, 0.1, 0.15)


def test_tagging_labels_sit_on_the_first_piece_of_each_word(ctx):
    tok = ctx.wordpiece()
    records = make_task(ctx.world, "tagging", "dev", 20)
    for r, f in zip(records, encode_tagged(tok, records)):
        assert f["ids"][0] == tok.cls_id and f["ids"][-1] == tok.sep_id and len(f["ids"]) == len(f["labels"])
        first = [label for label in f["labels"] if label != IGNORE]
        assert [TAGS[i] for i in first] == r["tags"]
        # Every labelled position starts a word: decoding the pieces up to the next label gives the word.
        starts = [j for j, label in enumerate(f["labels"]) if label != IGNORE] + [len(f["ids"]) - 1]
        words = [tok.decode(f["ids"][a:b]).replace(" ", "") for a, b in zip(starts, starts[1:])]
        assert words == r["tokens"]


def test_completion_labels_cover_only_the_answer(ctx):
    tok = ctx.bpe()
    records = make_task(ctx.world, "arithmetic", "dev", 3)
    pairs = encode_problems(tok, records)
    assert len(pairs) == 2 * len(records)
    batch = collate_completions(tok.eos_id)(pairs)
    for row, (prompt_ids, completion_ids) in enumerate(pairs):
        targets = batch["labels"][row][batch["labels"][row] != -100].tolist()
        assert targets == completion_ids  # answer tokens and the end of text, nothing of the prompt
        assert batch["input_ids"][row, : len(prompt_ids)].tolist() == prompt_ids
    direct, worked = (tok.decode(pairs[i][0]) for i in (0, 1))
    assert direct.endswith(DIRECT) and worked.endswith(WORKED)
    assert tok.decode(pairs[1][1]).strip().endswith(f"#### {records[0]['result']}")


def test_same_seed_same_tokenizers_and_ids_in_a_fresh_context(tmp_path):
    # The tour's models start from embeddings indexed by these ids, so a rerun must see the same ones.
    first, second = (Context(seed=3, quick=True, work=tmp_path / name, log=lambda m: None) for name in "ab")
    for make in (Context.wordpiece, Context.bpe):
        assert make(first).fingerprint() == make(second).fingerprint()
    assert tokenization.run(first).metrics == tokenization.run(second).metrics
    other = Context(seed=4, quick=True, work=tmp_path / "c", log=lambda m: None)
    assert other.wordpiece().fingerprint() != first.wordpiece().fingerprint()


def test_threads_option_is_checked(capsys):
    assert main(["tour", "--threads", "-1"]) == 2
    assert "--threads must be >= 0" in capsys.readouterr().err



def test_unigram_entropy_is_the_loss_of_predicting_token_frequencies():
    assert unigram_entropy(torch.tensor([[1, 1, 2, 2]])) == pytest.approx(math.log(2))
    # Ignored ids (specials, padding) are not targets, so they do not count.
    assert unigram_entropy(torch.tensor([[0, 0, 0, 1, 2, 3, 4]]), ignore=[0]) == pytest.approx(math.log(4))
