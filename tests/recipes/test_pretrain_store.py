"""pretrain and data prepare share token stores safely: a store is reused only for its own inputs, a
prepared store trains without naming text files, and objective/model pairs that cannot train are refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from plmkit import cli
from plmkit.config import parse
from plmkit.data.tokenizer import CharTokenizer
from plmkit.errors import ConfigError, DataError
from plmkit.recipes import pretrain

torch.set_num_threads(1)
TINY = ["--model.d_model=16", "--model.num_layers=1", "--model.num_heads=2", "--model.max_positions=32",
        "--data.seq_len=16", "--data.batch_size=2", "--data.eval_batches=1", "--train.max_steps=2",
        "--train.warmup_steps=0", "--no-train.progress", "--train.checkpoint_every=0"]


def _texts(tmp_path: Path) -> tuple[Path, Path]:
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    one.write_text("\n\n".join(f"the cat sat on mat {i}." for i in range(40)))
    two.write_text("\n\n".join(f"a dog ran to the park {i}." for i in range(40)))
    return one, two


def _sources(store: Path) -> list[str]:
    return [s["path"] for s in json.loads((store / "manifest.json").read_text())["sources"]]


def test_shared_store_with_new_inputs_is_refused_or_rebuilt(tmp_path: Path) -> None:
    one, two = _texts(tmp_path)
    shared = tmp_path / "shared"
    common = [*TINY, f"--data.store_dir={shared}", "--data.tokenizer=char"]
    pretrain.run(parse(pretrain.Config, [*common, f"--data.train_files={one}"]))
    assert _sources(shared / "train") == [str(one.resolve())]
    with pytest.raises(DataError, match=r"token store .*train holds other data: it was built from .*one.txt, "
                                        r"not .*two.txt; --data.rebuild_store rebuilds it"):
        pretrain.run(parse(pretrain.Config, [*common, f"--data.train_files={two}"]))
    assert _sources(shared / "train") == [str(one.resolve())]  # refused: nothing touched
    pretrain.run(parse(pretrain.Config, [*common, f"--data.train_files={two}", "--data.rebuild_store"]))
    assert _sources(shared / "train") == [str(two.resolve())]


def test_pretrain_on_a_prepared_store_without_text_files(tmp_path: Path, capsys) -> None:
    one, two = _texts(tmp_path)
    tok_dir = CharTokenizer.from_text(one.read_text() + two.read_text()).save(tmp_path / "tok")
    data = tmp_path / "data"
    for split, file in (("train", one), ("val", two)):
        assert cli.main(["data", "prepare", f"--inputs={file}", f"--tokenizer={tok_dir}",
                         f"--out_dir={data / split}", "--no-progress"]) == 0
    summary = pretrain.run(parse(pretrain.Config, [*TINY, f"--data.store_dir={data}"]))
    assert summary["steps"] == 2 and summary["val_loss"] > 0  # the prepared val/ store was read
    # Preparing again: the same inputs keep the store, other inputs are refused in one line.
    capsys.readouterr()
    argv = ["data", "prepare", f"--inputs={one}", f"--tokenizer={tok_dir}", f"--out_dir={data / 'train'}",
            "--no-progress"]
    assert cli.main(argv) == 0 and '"reused": true' in capsys.readouterr().out
    argv[2] = f"--inputs={two}"
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds other data: it was built from" in err and "--overwrite" in err


def test_store_dir_without_a_store_or_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds no token store and no data files were given"):
        pretrain.run(parse(pretrain.Config, [*TINY, f"--data.store_dir={tmp_path / 'none'}",
                                             "--data.tokenizer=char"]))


@pytest.mark.parametrize(("objective", "family", "message"), [
    ("clm", "bert", re.escape("--objective=clm trains a causal LM (gpt2, llama), but model.family=bert is an "
                              "encoder (bert, roberta, albert, distilbert): use --objective=mlm")),
    ("mlm", "llama", "--objective=mlm trains an encoder .*, but model.family=llama is a causal LM .*: "
                     "use --objective=clm"),
])
def test_objective_and_family_must_fit(tmp_path: Path, objective: str, family: str, message: str) -> None:
    one, _ = _texts(tmp_path)
    cfg = parse(pretrain.Config, [*TINY, f"--objective={objective}", f"--model.family={family}",
                                  f"--data.train_files={one}", "--data.tokenizer=char",
                                  f"--train.out_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=message):
        pretrain.run(cfg)
    assert not (tmp_path / "run").exists()  # refused before any store or checkpoint


def test_help_lists_objective_and_family_choices(capsys) -> None:
    assert cli.main(["pretrain", "--help"]) == 0
    out = capsys.readouterr().out
    assert "a key of" not in out
    assert "training objective: clm, mlm, span_corruption, denoising" in out
    assert "model family: gpt2, llama, bert, roberta, albert, distilbert, t5, bart" in out
    with pytest.raises(ConfigError, match=r"^--objective='clmm' is not one of clm, .*\(did you mean 'clm'"):
        parse(pretrain.Config, ["--objective=clmm"])
