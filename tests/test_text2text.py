"""Text-to-text data (prefixes, mixing, label words, bad input) and the encoder-decoder recipes:
`plmkit pretrain --objective=span_corruption|denoising` and `plmkit finetune --task=text2text`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from shared_paths import require_data

import plmkit
from plmkit import text2text as t2t
from plmkit.config import parse
from plmkit.data.store import PackedBatches, TokenStore
from plmkit.data.text2text import (
    TaskSpec,
    Text2TextExample,
    collate_text2text,
    encode_examples,
    label_from_word,
    mix,
    mixing_rates,
    read_examples,
    task_of,
)
from plmkit.data.tokenizer import Tokenizer
from plmkit.errors import DataError
from plmkit.metrics import bleu, exact_match, rouge_l
from plmkit.models.t5 import T5Config, t5_lm
from plmkit.recipes import finetune, pretrain


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.load(require_data("tokenizers", "t5"))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_and_tsv_with_named_fields_prefix_and_label_words(tmp_path: Path) -> None:
    jsonl = write_jsonl(
        tmp_path / "a.jsonl", [{"en": "Hello", "de": "Hallo"}, {"en": "Thanks", "de": "Danke"}]
    )
    spec = TaskSpec("translate", str(jsonl), "translate English to German: ", "en", "de")
    assert read_examples(spec) == [
        Text2TextExample("translate English to German: Hello", "Hallo", "translate"),
        Text2TextExample("translate English to German: Thanks", "Danke", "translate"),
    ]
    tsv = tmp_path / "sst2.tsv"
    tsv.write_text("sentence\tlabel\nI love this !\t1\nawful\t0\n")
    spec = TaskSpec(
        "sst2", str(tsv), "sst2 sentence: ", "sentence", "label", {"0": "negative", "1": "positive"}
    )
    examples = read_examples(spec)
    assert [e.target for e in examples] == ["positive", "negative"]
    assert label_from_word(" Positive ", spec.label_words) == "1"
    assert label_from_word("maybe", spec.label_words) is None


def test_missing_field_names_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"source": "a", "target": "b"}, {"source": "c"}])
    with pytest.raises(DataError, match=rf"^{path}:2: missing field 'target'$"):
        read_examples(TaskSpec("t", str(path)))


def test_mixing_rates_proportional_with_cap_and_temperature() -> None:
    sizes = {"big": 1_000_000, "mid": 3_000, "small": 1_000}
    rates = mixing_rates(sizes, cap=4_000)
    assert rates == pytest.approx({"big": 0.5, "mid": 0.375, "small": 0.125})
    hot = mixing_rates(sizes, cap=4_000, temperature=1000.0)
    assert all(abs(r - 1 / 3) < 0.01 for r in hot.values())
    assert mixing_rates({"a": 10, "b": 30}) == pytest.approx({"a": 0.25, "b": 0.75})


def test_mix_follows_the_rates() -> None:
    examples = {n: [Text2TextExample(f"{n}: {i}", "", n) for i in range(7)] for n in ("a", "b")}
    drawn = mix(examples, {"a": 0.8, "b": 0.2}, 5000, torch.Generator().manual_seed(0))
    share = sum(e.task == "a" for e in drawn) / len(drawn)
    assert abs(share - 0.8) < 0.02


def test_too_long_source_truncates_with_warning_or_fails(tokenizer: Tokenizer) -> None:
    ex = [Text2TextExample("summarize: " + "word " * 50, "short")]
    with pytest.warns(
        UserWarning, match=r"^examples: 1 of 1 sources were longer than 15 tokens and were cut to that "
                           r"\(the first is example 0, \d+ tokens\)$"
    ):
        (f,) = encode_examples(tokenizer, ex, 16, 8)
    assert len(f["input_ids"]) == 16 and f["input_ids"][-1] == tokenizer.eos_id
    with pytest.raises(DataError, match=r"examples\[0\]: source has \d+ tokens, more than the allowed 15"):
        encode_examples(tokenizer, ex, 16, 8, overflow="error")
    with pytest.raises(DataError, match=r"target has \d+ tokens, more than the allowed 1"):
        encode_examples(tokenizer, [Text2TextExample("a", "much longer target")], 16, 2, overflow="error")


def test_unknown_task_prefix_at_evaluation() -> None:
    prefixes = {"translate": "translate English to German: ", "summarize": "summarize: "}
    assert task_of("summarize: a long text", prefixes) == "summarize"
    with pytest.raises(DataError, match="dev.jsonl:3: unknown task prefix 'paraphrase'"):
        task_of("paraphrase: hi", prefixes, where="dev.jsonl:3")


def test_collate_pads_sources_and_labels_separately() -> None:
    batch = collate_text2text(
        [{"input_ids": [5, 6], "labels": [7, 8, 9]}, {"input_ids": [4], "labels": [1]}], 0
    )
    assert batch["input_ids"].tolist() == [[5, 6], [4, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert batch["labels"].tolist() == [[7, 8, 9], [1, -100, -100]]


def test_metrics_are_sacrebleu_and_rouge_score() -> None:
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert rouge_l(["the cat sat"], ["the cat sat on the mat"]) == pytest.approx(100 * 2 * 0.5 / 1.5)
    assert exact_match(["a", "b "], ["a", "c"]) == 0.5


@pytest.mark.parametrize(("objective", "family"), [("span_corruption", "t5"), ("denoising", "bart")])
def test_pretrain_objective_loss_goes_down(objective: str, family: str, tmp_path: Path) -> None:
    text = require_data("tiny_shakespeare", "input.txt").read_text()[:20000]
    (tmp_path / "shake.txt").write_text(text)
    cfg = parse(
        pretrain.Config,
        [
            f"--objective={objective}",
            f"--model.family={family}",
            f"--data.train_files={tmp_path / 'shake.txt'}",
            f"--data.val_files={tmp_path / 'shake.txt'}",
            "--data.eval_batches=1",
            "--data.tokenizer=char",
            "--data.split=file",
            "--data.seq_len=64",
            "--data.batch_size=8",
            "--model.d_model=32",
            "--model.num_layers=1",
            "--model.num_heads=2",
            "--model.max_positions=128",
            "--train.max_steps=20",
            "--train.lr=3e-3",
            "--train.progress=false",
            f"--train.out_dir={tmp_path / 'run'}",
        ],
    )
    summary = pretrain.run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = next(r["loss"] for r in rows if r.get("split") == "train")
    assert summary["final_loss"] < 0.9 * first
    loaded = plmkit.load(summary["hf_export"])
    assert loaded.model.config.model_type == family
    # Validation is the seq2seq objective on fixed corruptions (seeded by --seed), not a causal-LM loss.
    val = PackedBatches(TokenStore(tmp_path / "run" / "store" / "val"), 64, 8, seed=0, shuffle=False)
    corrupt = t2t.CORRUPTIONS[objective](loaded.tokenizer)
    expected = t2t.evaluate_seq2seq(loaded.model.eval(), val, 1, corrupt, seed=0)
    assert summary["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-4)


def test_finetune_text2text_loss_goes_down(tokenizer: Tokenizer, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = t5_lm(
        T5Config(
            vocab_size=tokenizer.vocab_size,
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=1,
            num_heads=4,
            dropout=0.0,
            feed_forward="gated-gelu",
        )
    )
    plmkit.save_hf(model, tmp_path / "t5", tokenizer=tokenizer)
    rng = random.Random(0)
    words = ["house", "tree", "water", "green", "blue", "dog"]
    rows = []
    for _ in range(48):
        picked = rng.sample(words, 2)
        rows.append({"src": "reverse: " + " ".join(picked), "tgt": " ".join(reversed(picked))})
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = parse(
        finetune.Config,
        [
            "--task=text2text",
            f"--pretrained={tmp_path / 't5'}",
            f"--out_dir={tmp_path / 'run'}",
            f"--data.train_file={data}",
            f"--data.eval_file={data}",
            "--data.text_column=src",
            "--data.label_column=tgt",
            "--data.batch_size=8",
            "--data.max_length=16",
            "--data.max_eval_examples=8",
            "--train.max_steps=25",
            "--train.schedule=constant",
            "--train.lr=1e-2",
            "--train.progress=false",
        ],
    )
    summary = finetune.run(cfg)
    assert summary["final_loss"] < 0.7 * summary["first_loss"], summary
    assert {"exact_match", "bleu", "rougeL"} <= set(summary)
    reloaded = plmkit.load(tmp_path / "run" / "model").model
    assert reloaded.config.model_type == "t5"


def test_text2text_glue_lives_in_recipes_and_evaluation_and_the_old_module_reexports_it() -> None:
    import subprocess
    import sys

    import plmkit.evaluation.text2text as held_out
    import plmkit.recipes.text2text as recipe

    for name in ("build_t5", "make_span_corruption", "MixtureConfig", "text2text_step", "write_task_table"):
        assert getattr(t2t, name) is getattr(recipe, name)
    for name in ("read_text2text", "evaluate_text2text", "generate_for_tasks", "task_scores"):
        assert getattr(t2t, name) is getattr(held_out, name)
    # plmkit eval's scoring sits below the recipes: importing it loads no recipe module.
    code = "import sys, plmkit.evaluation.heldout; print(sorted(m for m in sys.modules if 'recipes' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
