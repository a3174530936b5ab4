"""`plmkit pretrain --objective=mlm [--nsp | --sop]`: a few CPU steps on a tiny encoder lower the loss,
and the export loads in transformers; the packed-window pair builder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import plmkit
from plmkit.config import parse
from plmkit.data.tokenizer import train_tokenizer
from plmkit.errors import ConfigError
from plmkit.objectives.nsp import pairs_from_windows
from plmkit.recipes import pretrain
from plmkit.training.checkpoint import find_latest

TEXT = "\n\n".join(
    f"the cat sat on the mat number {i}. the dog ran to the park and back again." for i in range(60)
)


def run(tmp: Path, *extra: str, steps: int = 30) -> tuple[dict, list[float]]:
    (tmp / "train.txt").write_text(TEXT)
    # A small WordPiece vocabulary keeps the output layer tiny.
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = train_tokenizer([tmp / "train.txt"], kind="wordpiece", vocab_size=120,
                                special_tokens=specials, min_frequency=1)
    tokenizer.save(tmp / "tok")
    cfg = parse(pretrain.Config, [
        "--objective=mlm", f"--data.train_files={tmp / 'train.txt'}",
        f"--data.tokenizer={tmp / 'tok'}", "--data.seq_len=16",
        "--data.batch_size=16", "--model.d_model=32", "--model.num_layers=2", "--model.num_heads=2",
        "--model.max_positions=64", f"--train.max_steps={steps}", "--train.lr=1e-2", "--train.warmup_steps=0",
        "--no-train.progress", f"--train.out_dir={tmp / 'run'}", "--train.checkpoint_every=0", *extra,
    ])
    summary = pretrain.run(cfg)
    rows = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    return summary, [r["loss"] for r in rows if "loss" in r]


def test_pretrain_mlm_lowers_loss(tmp_path):
    summary, losses = run(tmp_path, "--model.family=bert")
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0]
    config = json.loads((Path(summary["hf_export"]) / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"]
    # The final training checkpoint (plmkit format) and the HF export load to the same model.
    native = plmkit.load(find_latest(tmp_path / "run")).model
    exported = plmkit.load(summary["hf_export"]).model
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    with torch.no_grad():
        torch.testing.assert_close(native(ids), exported(ids))


@pytest.mark.parametrize(("family", "flag", "arch"), [
    ("albert", "--sop", "AlbertForPreTraining"),
    ("bert", "--nsp", "BertForPreTraining"),
])
def test_pretrain_with_a_pair_task_exports_the_pretraining_class(tmp_path, family, flag, arch):
    import transformers

    summary, losses = run(tmp_path, f"--model.family={family}", flag, steps=3)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 < r["pair_loss"] < 5.0 for r in rows if "loss" in r)
    assert len(losses) == 3
    config = json.loads((Path(summary["hf_export"]) / "config.json").read_text())
    assert config["architectures"] == [arch]
    getattr(transformers, arch).from_pretrained(summary["hf_export"])


def test_nsp_and_sop_are_exclusive(tmp_path):
    with pytest.raises(ConfigError, match="--nsp and --sop are exclusive"):
        run(tmp_path, "--model.family=bert", "--nsp", "--sop")


def test_pairs_from_windows():
    windows = torch.arange(4 * 11).view(4, 11) + 100
    for task in ("nsp", "sop"):
        out = pairs_from_windows(windows, task, cls_id=1, sep_id=2,
                                 generator=torch.Generator().manual_seed(0))
        assert out["input_ids"].shape == (4, 11) and out["token_type_ids"].shape == (4, 11)
        assert out["pair_labels"].tolist().count(1) not in (0, 4)  # both labels appear for this seed
        for row, label, types in zip(out["input_ids"].tolist(), out["pair_labels"].tolist(),
                                     out["token_type_ids"].tolist()):
            assert row[0] == 1 and row[-1] == 2 and row.count(2) == 2
            sep = row.index(2)
            a, b = row[1:sep], row[sep + 1:-1]
            assert types == [0] * (len(a) + 2) + [1] * (len(b) + 1)
            same_window = (a[0] - 100) // 11 == (b[0] - 100) // 11
            if task == "nsp":
                assert same_window == (label == 0)
                if label == 0:
                    assert b[0] == a[-1] + 1
            else:
                assert same_window
                assert (b[0] == a[-1] + 1) == (label == 0) and (a[0] == b[-1] + 1) == (label == 1)
