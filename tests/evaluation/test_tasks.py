"""The task format: shipped task files parse and run on the shared data and the world's files; prompts
are built as documented; every bad input is a one-line error naming the task and the field."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import plmkit
from plmkit.errors import ConfigError, DataError
from plmkit.evaluation import builtin_tasks, load_task, parse_spec, run_task
from plmkit.evaluation.runner import read_docs, resolve

SHIPPED_ON_SHARED_DATA = ["sst2_0shot", "sst2_4shot", "sst2_8shot", "hhh", "gsm8k_cot_8shot", "wikitext2"]
WORLD = ["world_sentiment_4shot", "world_arithmetic_cot_4shot", "world_arithmetic_sc", "world_qa",
         "world_translation", "world_dialogue"]


def test_every_shipped_task_file_parses():
    assert set(builtin_tasks()) == set(SHIPPED_ON_SHARED_DATA + WORLD)
    for name in builtin_tasks():
        spec = load_task(name)
        assert spec.task == name and spec.metrics


@pytest.fixture(scope="module")
def lm(gpt2_checkpoint):
    torch.set_num_threads(1)
    pre = plmkit.load(gpt2_checkpoint)
    return pre.model.eval(), pre.require_tokenizer()


def _small(name: str) -> object:
    spec = load_task(name)
    if spec.kind == "generate_until":  # the toy model's context is 128 tokens
        spec.generation = dataclasses.replace(spec.generation, max_new_tokens=8)
    return spec


@pytest.mark.parametrize("name", SHIPPED_ON_SHARED_DATA)
def test_shipped_tasks_run_on_the_shared_data(name, lm, shared_data):
    root = shared_data
    spec = _small(name)
    out = run_task(*lm, spec, root, batch_size=8, log_samples=True, limit=2, progress=False)
    assert out["n"] == 2 and out["num_fewshot"] == spec.num_fewshot
    for metric in spec.metrics:
        assert metric in out and f"{metric}_stderr" in out
    if spec.kind != "perplexity":
        context = out["samples"][0]["context"]
        assert context.count(spec.fewshot_delimiter) >= spec.num_fewshot


def test_sst2_shots_and_label_words(lm, shared_data):
    spec = load_task("sst2_4shot")
    out = run_task(*lm, spec, shared_data, log_samples=True, limit=3, progress=False)
    again = run_task(*lm, spec, shared_data, log_samples=True, limit=3, progress=False)
    for s, t in zip(out["samples"], again["samples"]):
        assert s["context"] == t["context"]  # the seed fixes the shots
        blocks = s["context"].split("\n\n")
        assert len(blocks) == 5 and blocks[-1].startswith("Review: ") and blocks[-1].endswith("\nSentiment:")
        assert all(b.endswith(("Sentiment: negative", "Sentiment: positive")) for b in blocks[:4])
        assert s["choices"] == ["negative", "positive"]
    assert out["samples"][0]["context"] != out["samples"][1]["context"]  # drawn per example, as lm-eval


def test_hhh_and_gsm8k_and_wikitext_documents(shared_data):
    root = shared_data
    hhh = load_task("hhh")
    docs = read_docs(hhh, resolve(hhh, "eval_file", root))
    assert len(docs) == 438
    gsm = load_task("gsm8k_cot_8shot")
    assert len(gsm.fewshot_samples) == 8
    assert gsm.fewshot_samples[0]["question"].startswith("There are 15 trees")
    wiki = load_task("wikitext2")
    articles = read_docs(wiki, resolve(wiki, "eval_file", root))
    assert len(articles) > 50 and articles[0]["text"].startswith(" = ")
    whole = resolve(wiki, "eval_file", root).read_text()
    assert "".join(a["text"] for a in articles).strip() == whole.strip()


def test_world_tasks_run_on_the_world_files(lm, tmp_path):
    from plmkit.world.io import write_world

    tasks = ["sentiment", "arithmetic", "qa", "translation", "dialogue"]
    write_world(tmp_path, tasks=tasks, corpus_paragraphs=5)
    for name in WORLD:
        spec = _small(name)
        out = run_task(*lm, spec, tmp_path, log_samples=True, limit=2, progress=False)
        assert out["n"] == 2, name
        if name == "world_arithmetic_sc":
            assert len(out["samples"][0]["generations"]) == 5  # k samples, majority vote
        if name == "world_qa":
            assert out["samples"][0]["target"] == json.loads(
                (tmp_path / "qa" / "dev.jsonl").read_text().splitlines()[0])["answers"]["text"][0]


# ---- bad input --------------------------------------------------------------------------------------------

BASE = {"task": "toy", "kind": "multiple_choice", "eval_file": "test.jsonl", "prompt": "{sentence}",
        "target": "{pair}", "choices": "options"}


def _one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


def test_template_naming_a_missing_field(lm, toy_data):
    spec = parse_spec({**BASE, "prompt": "{review}\nColor:"})
    with pytest.raises(DataError) as e:
        run_task(*lm, spec, toy_data, progress=False)
    assert "task 'toy'" in _one_line(e) and "prompt names field '{review}'" in str(e.value)
    spec = parse_spec({**BASE, "target": "{answer[3]}"})
    with pytest.raises(DataError, match="task 'toy'.*target"):
        run_task(*lm, spec, toy_data, progress=False)


def test_empty_choice_lists(lm, toy_data, tmp_path):
    with pytest.raises(ConfigError) as e:
        parse_spec({**BASE, "choices": []})
    assert "task 'toy'" in _one_line(e) and "choices is an empty list" in str(e.value)
    (tmp_path / "test.jsonl").write_text(json.dumps({"sentence": "s", "pair": "a", "options": []}) + "\n")
    with pytest.raises(DataError, match="task 'toy'.*choices: a document has an empty choice list"):
        run_task(*lm, parse_spec(BASE), tmp_path, progress=False)


def test_more_shots_than_the_split_holds(lm, toy_data):
    spec = parse_spec({**BASE, "num_fewshot": 12})  # the split holds 12, one of them the example itself
    with pytest.raises(DataError) as e:
        run_task(*lm, spec, toy_data, progress=False)
    assert "task 'toy'" in _one_line(e) and "num_fewshot asks for 12 shots" in str(e.value)
    assert "holds 11" in str(e.value)
    spec = parse_spec({**BASE, "num_fewshot": 41, "fewshot_file": "train.jsonl"})
    with pytest.raises(DataError, match=r"asks for 41 shots but the few-shot split \(train.jsonl\)"):
        run_task(*lm, spec, toy_data, progress=False)


def test_generation_without_a_stop_or_a_limit():
    raw = {**BASE, "kind": "generate_until", "choices": None}
    with pytest.raises(ConfigError) as e:
        parse_spec(raw)
    assert "task 'toy'" in _one_line(e) and "generation needs a stop sequence" in str(e.value)
    assert parse_spec({**raw, "generation": {"max_new_tokens": 4}}).generation.max_new_tokens == 4
    assert parse_spec({**raw, "generation": {"until": "\n"}}).generation.until == ["\n"]


def test_other_spec_errors_name_the_key():
    with pytest.raises(ConfigError, match="task 'toy'.*unknown key 'promt'"):
        parse_spec({**BASE, "promt": "x"})
    with pytest.raises(ConfigError, match="task 'toy'.*kind is 'ranking'"):
        parse_spec({**BASE, "kind": "ranking"})
    with pytest.raises(ConfigError, match="'bleu' is not a multiple_choice metric"):
        parse_spec({**BASE, "metrics": ["bleu"]})
    with pytest.raises(ConfigError, match="no task named 'sst3'"):
        load_task("sst3")
    spec = parse_spec(BASE)
    with pytest.raises(DataError, match="task 'toy'.*eval_file .*nowhere/test.jsonl not found"):
        resolve(spec, "eval_file", "/nowhere")
