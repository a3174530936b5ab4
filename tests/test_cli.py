from __future__ import annotations

import json
import subprocess
import sys

import pytest

from plmkit import cli

RECIPE = '''
"""Echo the config back: a recipe used by the CLI tests.

Longer description that only `--help` of the command shows.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from plmkit.errors import DataError


@dataclass
class Inner:
    width: int = field(default=8, metadata={"help": "hidden width"})


@dataclass
class Config:
    inner: Inner = field(default_factory=Inner, metadata={"help": "inner group"})
    name: str = field(default="demo", metadata={"help": "run name"})
    fail: bool = field(default=False, metadata={"help": "raise a DataError"})


def run(cfg: Config) -> dict:
    if cfg.fail:
        raise DataError("file data.txt line 3: something is wrong")
    return {"width": cfg.inner.width, "name": cfg.name}
'''


@pytest.fixture
def commands(tmp_path, monkeypatch):
    (tmp_path / "plmkit_cli_fake_recipe.py").write_text(RECIPE)
    monkeypatch.syspath_prepend(str(tmp_path))
    table = {
        "echo": "plmkit_cli_fake_recipe",
        "missing": "plmkit_cli_no_such_recipe",
        "group": {"sub": "plmkit_cli_fake_recipe"},
    }
    monkeypatch.setattr(cli, "COMMANDS", table)
    return table


def test_top_level_help_lists_commands_with_summaries(commands, capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "  echo       Echo the config back: a recipe used by the CLI tests." in out
    assert "  missing    (not available)" in out
    assert "  group sub  Echo the config back" in out
    assert "Longer description" not in out


def test_command_help_lists_options_with_defaults(commands, capsys):
    assert cli.main(["echo", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Longer description that only `--help` of the command shows." in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip().startswith("--")}
    assert "hidden width (default: 8)" in lines["--inner.width"]
    assert "run name (default: 'demo')" in lines["--name"]
    assert "(default: false)" in lines["--fail"]


def test_runs_recipe_with_overrides(commands, capsys):
    assert cli.main(["group", "sub", "--inner.width=16", "--name", "x"]) == 0
    out = capsys.readouterr().out
    assert '"width": 16' in out and '"name": "x"' in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["echo", "--inner.widht=3"], "error: unknown option --inner.widht (did you mean --inner.width?)"),
        (["echo", "--inner.width=wide"], "error: --inner.width expects int, got 'wide'"),
        (["echo", "--fail"], "error: file data.txt line 3: something is wrong"),
        (["ecko"], "error: unknown command 'ecko' (did you mean 'echo'?); `plmkit --help` lists them"),
        (
            ["group", "sbu"],
            "error: unknown command 'group sbu' (did you mean 'group sub'?); `plmkit --help` lists them",
        ),
        (
            ["missing"],
            "error: command 'missing' is not available in this version (plmkit_cli_no_such_recipe)",
        ),
    ],
)
def test_errors_are_one_line_with_exit_code_2(commands, capsys, argv, message):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == message + "\n"
    assert captured.out == ""


def test_real_command_table_is_explicit_and_complete():
    flat = {name for name, _ in cli._listing(cli.COMMANDS)}
    expected = {"pretrain", "finetune", "distill", "generate", "eval", "merge", "world", "tour",
                "tokenizer train", "data prepare"}
    assert expected <= flat
    # Every registered module is either importable source or reported as not available; nothing crashes.
    assert all(isinstance(summary, str) for _, summary in cli._listing(cli.COMMANDS))


def test_python_dash_m_plmkit_subprocess():
    help_run = subprocess.run([sys.executable, "-m", "plmkit", "--help"], capture_output=True, text=True)
    assert help_run.returncode == 0
    assert "tokenizer train" in help_run.stdout and "data prepare" in help_run.stdout
    # `plmkit --help` reads recipe summaries from source: it never waits for torch to import.
    check = "import sys; from plmkit.cli import main; main(['--help']); assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", check], capture_output=True).returncode == 0
    bad = subprocess.run(
        [sys.executable, "-m", "plmkit", "nonexistent-command"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: unknown command 'nonexistent-command'")
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_tokenizer_train_then_data_prepare_end_to_end(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\n\nthe dog sat on the log\n\n" * 50)
    tok_dir = tmp_path / "tok"
    train = ["tokenizer", "train", f"--files={corpus}", f"--out_dir={tok_dir}"]
    assert cli.main([*train, "--vocab_size=300"]) == 0
    assert (tok_dir / "tokenizer.json").is_file()
    capsys.readouterr()
    assert cli.main(train) == 2
    expected = f"error: {tok_dir / 'tokenizer.json'} already exists (set --overwrite to replace it)\n"
    assert capsys.readouterr().err == expected
    config = tmp_path / "prepare.yaml"
    store = tmp_path / "store"
    config.write_text(f"inputs: [{corpus}]\ntokenizer: {tok_dir}\nout_dir: {store}\nprogress: false\n")
    assert cli.main(["data", "prepare", "--config", str(config), "--num_proc=2"]) == 0
    out = capsys.readouterr().out
    assert '"num_documents": 100' in out and '"dtype": "uint16"' in out
    config.write_text("inputz: [a.txt]\n")
    assert cli.main(["data", "prepare", "--config", str(config)]) == 2
    assert capsys.readouterr().err == f"error: unknown key 'inputz' in {config} (did you mean 'inputs'?)\n"


def test_tokenizer_train_says_why_the_vocabulary_came_out_smaller(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\n\nthe dog sat on the log\n\n" * 20)
    assert cli.main(["tokenizer", "train", f"--files={corpus}", f"--out_dir={tmp_path / 'tok'}",
                     "--vocab_size=8000"]) == 0
    captured = capsys.readouterr()
    got = json.loads(captured.out)["vocab_size"]
    assert got < 8000
    assert captured.err == (f"note: asked for 8000 tokens, got {got}: training stops when no pair of tokens "
                            "occurs at least --min_frequency=2 times; more text (or a lower --min_frequency) "
                            "gives more\n")


def test_unknown_command_hint_only_for_near_misses(capsys):
    assert cli.main(["generat"]) == 2
    assert "did you mean 'generate'?" in capsys.readouterr().err
    assert cli.main(["optim"]) == 2  # no command is near: no guess
    assert capsys.readouterr().err == "error: unknown command 'optim'; `plmkit --help` lists them\n"
