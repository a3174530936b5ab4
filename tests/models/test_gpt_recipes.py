"""The decoder recipes: pretrain (clm) lowers the loss, generate and eval run on its output; YAML parses."""

from __future__ import annotations

from pathlib import Path

import pytest

from plmkit.config import parse
from plmkit.errors import ConfigError
from plmkit.recipes import pretrain

REPO = Path(__file__).resolve().parents[2]
TEXT = "\n\n".join(
    f"the cat sat on the mat number {i}. the dog ran to the park and back again." for i in range(60)
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict, Path]:
    tmp = tmp_path_factory.mktemp("pretrain")
    (tmp / "train.txt").write_text(TEXT)
    (tmp / "val.txt").write_text(TEXT[:800])
    cfg = parse(pretrain.Config, [
        f"--data.train_files={tmp / 'train.txt'}", f"--data.val_files={tmp / 'val.txt'}",
        "--data.tokenizer=char", "--data.seq_len=32", "--data.batch_size=8", "--data.eval_batches=2",
        "--model.d_model=32", "--model.num_layers=2", "--model.num_heads=2", "--model.max_positions=64",
        "--train.max_steps=30", "--train.lr=3e-3", "--train.warmup_steps=0", "--no-train.progress",
        f"--train.out_dir={tmp / 'run'}", "--train.checkpoint_every=0",
    ])
    summary = pretrain.run(cfg)
    history = [row for row in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    return tmp, summary, Path(summary["hf_export"]) if history else Path()


def test_pretrain_clm_lowers_loss(trained) -> None:
    import json

    tmp, summary, _ = trained
    rows = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.8 * losses[0]
    assert summary["val_loss"] < losses[0] and summary["val_ppl"] > 1.0


def test_generate_and_eval_recipes_on_pretrained(trained, capsys) -> None:
    from plmkit.recipes import eval as eval_recipe
    from plmkit.recipes import generate as generate_recipe

    tmp, _, hf_dir = trained
    out = generate_recipe.run(parse(generate_recipe.Config, [
        f"--model={hf_dir}", "--prompt=the cat", "--max_new_tokens=12",
    ]))
    assert out["text"][0].startswith("the cat") and len(out["text"][0]) == len("the cat") + 12
    assert capsys.readouterr().out.startswith("the cat")
    result = eval_recipe.run(parse(eval_recipe.Config, [
        f"--model={hf_dir}", f"--perplexity={tmp / 'val.txt'}", "--seq_len=32",
    ]))
    assert 1.0 < result["perplexity"] < 20.0


def test_training_checkpoint_loads_like_hf_export(trained) -> None:
    import torch

    import plmkit
    from plmkit.training import find_latest

    tmp, _, hf_dir = trained
    native = plmkit.load(find_latest(tmp / "run"))
    exported = plmkit.load(hf_dir)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(native.model(ids), exported.model(ids))
    assert native.tokenizer.vocab_size == exported.tokenizer.vocab_size


def test_unknown_objective_and_family() -> None:
    with pytest.raises(ConfigError, match="objective='mlmx' is not one of clm"):
        pretrain.run(parse(pretrain.Config, ["--objective=mlmx"]))


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("gpt-*.yaml")), ids=lambda p: p.name)
def test_shipped_yaml_parses(path: Path) -> None:
    cfg = parse(pretrain.Config, ["--config", str(path)])
    assert cfg.model.family in pretrain.MODELS and cfg.objective in pretrain.OBJECTIVES


def test_pretrain_clm_with_random_windows_lowers_loss(tmp_path) -> None:
    import json

    (tmp_path / "train.txt").write_text(TEXT)
    cfg = parse(pretrain.Config, [
        f"--data.train_files={tmp_path / 'train.txt'}", "--data.tokenizer=char", "--data.seq_len=32",
        "--data.batch_size=8", "--data.sampling=random_windows", "--model.d_model=32", "--model.num_layers=2",
        "--model.num_heads=2", "--model.max_positions=64", "--train.max_steps=30", "--train.lr=3e-3",
        "--train.warmup_steps=0", "--no-train.progress", f"--train.out_dir={tmp_path / 'run'}",
        "--train.checkpoint_every=0",
    ])
    pretrain.run(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.8 * losses[0]


def test_unknown_sampling_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="data.sampling='shuffled' is not one of packed, random_windows"):
        pretrain.run(parse(pretrain.Config, ["--data.sampling=shuffled", "--data.train_files=x.txt"]))
