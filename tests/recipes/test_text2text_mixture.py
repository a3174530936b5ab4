"""`plmkit finetune --task=text2text` over several sources (data.mixture): config errors, the mixture
sampler's rates, per-task metrics end to end, the unknown-prefix check; and the seq2seq validation loss
of `plmkit pretrain --objective=span_corruption|denoising`."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

import plmkit
from plmkit import text2text as t2t
from plmkit.config import parse
from plmkit.data.text2text import MixtureBatches, Text2TextExample
from plmkit.data.tokenizer import CharTokenizer
from plmkit.errors import ConfigError, DataError
from plmkit.models.bart import BartConfig, bart_lm
from plmkit.models.t5 import T5Config, shift_right, t5_lm
from plmkit.objectives.denoising import DenoisingConfig, denoising_batch
from plmkit.objectives.seq2seq import seq2seq_loss
from plmkit.objectives.span_corruption import span_corruption_batch
from plmkit.recipes import finetune

WORDS = ["house", "tree", "water", "green", "blue", "dog"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def two_sources(tmp_path: Path, n_reverse: int = 48, n_sentiment: int = 24) -> dict[str, Path]:
    rng = random.Random(0)
    rows = []
    for _ in range(n_reverse):
        picked = rng.sample(WORDS, 2)
        rows.append({"src": " ".join(picked), "tgt": " ".join(reversed(picked))})
    reverse = write_jsonl(tmp_path / "reverse.jsonl", rows)
    lines = ["sentence\tlabel"]
    for i in range(n_sentiment):
        good = i % 2 == 0
        lines.append(f"{rng.choice(WORDS)} is {'great' if good else 'awful'}\t{int(good)}")
    sentiment = tmp_path / "sentiment.tsv"
    sentiment.write_text("\n".join(lines) + "\n")
    return {"reverse": reverse, "sentiment": sentiment}


def mixture_yaml(tmp_path: Path, files: dict[str, Path], extra: str = "") -> Path:
    text = f"""task: text2text
data:
  mixture:
    mixing: temperature
    temperature: 2.0
    cap: 40
    sources:
      - name: reverse
        train: {files['reverse']}
        eval: {files['reverse']}
        source_field: src
        target_field: tgt
        prefix: "reverse: "
        max_eval_examples: 8
      - name: sentiment
        train: {files['sentiment']}
        eval: {files['sentiment']}
        format: tsv
        source_field: sentence
        target_field: label
        prefix: "sentiment: "
        label_words: {{"0": negative, "1": positive}}
        max_eval_examples: 8
{extra}"""
    path = tmp_path / "mixture.yaml"
    path.write_text(text)
    return path


# ---- config -------------------------------------------------------------------------------------------


def test_mixture_config_parses_yaml_and_overrides(tmp_path: Path) -> None:
    cfg = parse(finetune.Config, ["--config", str(mixture_yaml(tmp_path, two_sources(tmp_path))),
                                  "--data.mixture.cap=30"])
    m = cfg.data.mixture
    assert [s.name for s in m.sources] == ["reverse", "sentiment"]
    assert m.sources[1].label_words == {"0": "negative", "1": "positive"}
    assert (m.mixing, m.cap, m.temperature) == ("temperature", 30, 2.0)


def test_mixture_config_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  mixture:\n    sources:\n      - name: a\n        train: a.jsonl\n"
                    "        prefix: 'a: '\n        target_fild: 'x'\n")
    key = r"data\.mixture\.sources\[0\]\.target_fi"
    with pytest.raises(ConfigError, match=rf"unknown key '{key}ld' in .*did you mean '{key}eld'"):
        parse(finetune.Config, ["--config", str(path)])
    with pytest.raises(ConfigError, match=r"unknown option --data\.mixture\.tmperature.*temperature"):
        parse(finetune.Config, ["--data.mixture.tmperature=2"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("    sources: [{name: a, train: a.jsonl, prefix: 'a: '}, {name: a, train: b.jsonl, prefix: 'b: '}]",
         "source name 'a' is used twice"),
        ("    sources: [{name: a, train: a.jsonl}]", r"sources\[0\]: source 'a' needs a prefix"),
        ("    temperature: 3.0\n    sources: [{name: a, train: a.jsonl, prefix: 'a: '}]",
         "mixing is 'proportional': set mixing=temperature"),
        ("    sources: [{name: a, train: a.jsonl, prefix: 'a: ', format: csv}]",
         "format 'csv' is not one of"),
    ],
)
def test_mixture_config_bad_values(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  mixture:\n" + body + "\n")
    with pytest.raises(ConfigError, match=message):
        parse(finetune.Config, ["--config", str(path)])


def test_missing_source_file_is_named_before_any_model_loads(tmp_path: Path) -> None:
    files = two_sources(tmp_path)
    files["sentiment"] = tmp_path / "nowhere.tsv"
    cfg = parse(finetune.Config, ["--config", str(mixture_yaml(tmp_path, files)),
                                  f"--pretrained={tmp_path / 'no_model'}"])
    with pytest.raises(DataError, match=r"source 'sentiment': train file .*nowhere\.tsv not found"):
        finetune.run(cfg)


# ---- the sampler --------------------------------------------------------------------------------------


def expected_rates(sizes: dict[str, int], cap: int, temperature: float) -> dict[str, float]:
    # Raffel et al. 2020 sec. 3.5.2: r_m = min(N_m, K)^(1/T) / sum_n min(N_n, K)^(1/T)
    w = {k: min(n, cap) ** (1 / temperature) for k, n in sizes.items()}
    return {k: v / sum(w.values()) for k, v in w.items()}


@pytest.mark.parametrize(("mixing", "temperature"), [("proportional", 1.0), ("temperature", 3.0)])
def test_mixture_batches_draw_tasks_at_the_configured_rates(mixing: str, temperature: float) -> None:
    sizes = {"big": 5000, "mid": 300, "small": 40}
    m = t2t.MixtureConfig(
        sources=[t2t.SourceConfig(name=k, train=f"{k}.jsonl", prefix=f"{k}: ") for k in sizes],
        mixing=mixing, cap=1000, temperature=temperature,
    )
    rates = m.rates(sizes)
    want = expected_rates(sizes, 1000, temperature)
    assert rates == pytest.approx(want)
    examples = {k: [(k, i) for i in range(n)] for k, n in sizes.items()}
    batches = MixtureBatches(examples, rates, list, batch_size=50, seed=3)
    drawn = [x for _ in range(300) for x in batches.next_batch()]
    counts = Counter(task for task, _ in drawn)
    n = len(drawn)
    for task, p in want.items():
        assert abs(counts[task] / n - p) < 4 * math.sqrt(p * (1 - p) / n), (task, counts[task] / n, p)
    # A task's examples all come once before any repeats (the small one wrapped around several times).
    small = [i for task, i in drawn if task == "small"]
    assert sorted(small[:40]) == list(range(40))
    assert sorted(small[40:80]) == list(range(40))


def test_mixture_batches_resume_exactly() -> None:
    examples = {"a": list(range(7)), "b": list(range(100, 103))}
    rates = {"a": 0.6, "b": 0.4}
    one = MixtureBatches(examples, rates, list, batch_size=4, seed=0)
    for _ in range(5):
        one.next_batch()
    two = MixtureBatches(examples, rates, list, batch_size=4, seed=0)
    two.load_state_dict(json.loads(json.dumps(one.state_dict())))
    assert [two.next_batch() for _ in range(5)] == [one.next_batch() for _ in range(5)]
    with pytest.raises(DataError, match="sampler state key 'seed'"):
        MixtureBatches(examples, rates, list, batch_size=4, seed=1).load_state_dict(one.state_dict())


# ---- end to end and the unknown-prefix check ---------------------------------------------------------


def tiny_t5(path: Path) -> Path:
    """A 1-layer T5 over a character vocabulary (its special ids come last), to keep the run fast."""
    chars = sorted(set(" ".join(WORDS) + "reversentimgaflw: isaw"))
    tok = CharTokenizer(chars, {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"})
    torch.manual_seed(0)
    model = t5_lm(T5Config(vocab_size=tok.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                           num_heads=4, dropout=0.0, feed_forward="gated-gelu", pad_token_id=tok.pad_id,
                           eos_token_id=tok.eos_id, decoder_start_token_id=tok.pad_id))
    plmkit.save_hf(model, path, tokenizer=tok)
    return path


def test_finetune_two_sources_reports_per_task_metrics(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    files = two_sources(tmp_path)
    cfg = parse(finetune.Config, [
        "--config", str(mixture_yaml(tmp_path, files)),
        f"--pretrained={tiny_t5(tmp_path / 't5')}",
        f"--out_dir={tmp_path / 'run'}",
        "--data.batch_size=8", "--data.max_length=32",
        "--train.max_steps=25", "--train.schedule=constant", "--train.lr=1e-2", "--train.progress=false",
    ])
    summary = finetune.run(cfg)
    assert summary["final_loss"] < 0.7 * summary["first_loss"], summary
    assert {"reverse/bleu", "reverse/rougeL", "reverse/exact_match", "sentiment/accuracy",
            "sentiment/invalid"} <= set(summary)
    assert 0.0 <= summary["sentiment/accuracy"] <= 1.0 - summary["sentiment/invalid"] + 1e-9
    # cap 40, T=2: sizes 48 -> 40 and 24 give sqrt(40) : sqrt(24)
    want = expected_rates({"reverse": 48, "sentiment": 24}, 40, 2.0)
    line = f"mixing rates: reverse {want['reverse']:.3f}, sentiment {want['sentiment']:.3f}"
    assert line in capsys.readouterr().out
    tasks = json.loads((tmp_path / "run" / "model" / "text2text_tasks.json").read_text())
    assert tasks["sentiment"] == {"prefix": "sentiment: ", "label_words": {"0": "negative", "1": "positive"}}


def test_classification_accuracy_maps_label_words_back() -> None:
    words = {"0": "negative", "1": "positive"}
    scores = t2t.task_scores(["positive", " Negative", "maybe", "negative"],
                             ["positive", "negative", "positive", "positive"], words)
    assert scores == {"accuracy": 0.5, "invalid": 0.25}


def test_unknown_prefix_in_the_eval_file_names_line_prefix_and_known_ones(tmp_path: Path) -> None:
    files = two_sources(tmp_path)
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"source": "reverse: dog tree", "target": "tree dog"},
                                               {"source": "paraphrase: dog tree", "target": "x"}])
    cfg = parse(finetune.Config, ["--config", str(mixture_yaml(tmp_path, files)), f"--data.eval_file={dev}"])
    with pytest.raises(DataError) as e:
        t2t.read_mixture(cfg.data)
    assert str(e.value) == f"{dev}:2: unknown task prefix 'paraphrase' (known: 'reverse:', 'sentiment:')"
    # A mixed eval file with known prefixes: tasks by prefix, labels to their words.
    dev.write_text(json.dumps({"source": "sentiment: good", "target": "1"}) + "\n")
    _, evals = t2t.read_mixture(cfg.data)
    assert [(r.task, r.target) for r in evals] == [("sentiment", "positive")]


def test_unknown_prefix_at_evaluation_is_an_error_before_generating(tmp_path: Path) -> None:
    files = two_sources(tmp_path)
    cfg = parse(finetune.Config, ["--config", str(mixture_yaml(tmp_path, files))])
    records = [Text2TextExample("reverse: a b", "b a", "reverse", "dev.jsonl:1"),
               Text2TextExample("translate: a b", "b a", "reverse", "dev.jsonl:2")]
    with pytest.raises(DataError, match=r"^dev\.jsonl:2: unknown task prefix 'translate' \(known: "
                                        r"'reverse:', 'sentiment:'\)$"):
        t2t.evaluate_text2text(torch.nn.Identity(), None, records, [], cfg.data)
    with pytest.raises(DataError, match=r"input 1: unknown task prefix 'summarize'"):
        t2t.check_prefixes(["reverse: x", "summarize: y"], {"reverse": "reverse: "}, where="input")


# ---- pretraining: the seq2seq validation loss --------------------------------------------------------


class FixedBatches:
    def __init__(self, windows: torch.Tensor):
        self.windows = windows

    def next_batch(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.windows}


@pytest.mark.parametrize("objective", ["span_corruption", "denoising"])
def test_seq2seq_eval_loss_is_the_objective_loss_on_fixed_corruptions(objective: str) -> None:
    tok = CharTokenizer(sorted(set("abcdefgh .")))
    torch.manual_seed(0)
    if objective == "span_corruption":
        model = t5_lm(T5Config(vocab_size=tok.vocab_size + 100, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                               num_heads=4, dropout=0.0))
    else:
        model = bart_lm(BartConfig(vocab_size=tok.vocab_size + 1, max_positions=64, d_model=16, num_layers=1,
                                   num_heads=2, d_ff=32, dropout=0.0, pad_token_id=0, bos_token_id=0,
                                   eos_token_id=0, decoder_start_token_id=0))
    model.eval()
    text = "abc. defg. hab cd. efgh ab. " * 3  # 60-token windows: 3 noise spans, so the noise varies
    windows = torch.tensor([tok.encode(text[i:])[:60] for i in range(3)])
    corrupt = t2t.CORRUPTIONS[objective](tok)
    scores = t2t.evaluate_seq2seq(model, FixedBatches(windows), 1, corrupt, seed=5)

    g = torch.Generator().manual_seed(5)
    if objective == "span_corruption":
        batch = span_corruption_batch(windows, g, model.config.vocab_size - 1, tok.eos_id)
    else:
        dots = (tok.token_to_id("."),)
        cfg = DenoisingConfig(mask_id=model.config.vocab_size - 1, sentence_end_ids=dots)
        batch = denoising_batch(windows, cfg, g, model.config.pad_token_id)
    dec = shift_right(batch["labels"], model.config.decoder_start_token_id, model.config.pad_token_id)
    with torch.no_grad():
        logits = model(batch["input_ids"], batch.get("attention_mask"), decoder_input_ids=dec)
    loss_sum, n = seq2seq_loss(logits, batch["labels"])
    assert scores["val_loss"] == pytest.approx(float(loss_sum) / int(n), rel=1e-6)
    assert scores["val_ppl"] == pytest.approx(math.exp(scores["val_loss"]))
    # Fixed noise: evaluating again scores the same corrupted examples.
    assert t2t.evaluate_seq2seq(model, FixedBatches(windows), 1, corrupt, seed=5) == scores
    assert t2t.evaluate_seq2seq(model, FixedBatches(windows), 1, corrupt, seed=6) != scores
