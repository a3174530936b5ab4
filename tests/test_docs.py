"""The documentation is tested: README.md and docs/*.md cannot drift from the code.

- Every shell command in a code block that starts with `plmkit` (or `python -m plmkit`, or `torchrun ... -m
  plmkit`) is parsed with the CLI's own parser: an unknown command or option, or a value of the wrong type,
  fails. Placeholders are allowed where a reader must fill something in: `...` (more options), `<...>`,
  an all-caps word (`DIR`, `N`), `a|b` alternatives, and `[--opt ...]` (an optional part, still checked).
- A block preceded by `<!-- run: CMD OVERRIDES; CMD OVERRIDES -->` also runs, its commands in order in one
  scratch directory (with `configs/` linked in), each command given the overrides listed for it
  (`pretrain --train.max_steps=2`; `{data}` is the shared data folder).
- Every ```python block runs in a scratch directory, unless the line before its fence is
  `<!-- not-run: reason -->`.

The convention is written down in docs/internals.md.
"""

from __future__ import annotations

import re
import shlex
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from plmkit import cli
from plmkit.config import parse
from plmkit.errors import ConfigError, PlmkitError

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!--\s*(run|not-run):\s*(.*?)\s*-->\s*$")
SHELL = {"", "bash", "sh", "shell", "console"}
PLACEHOLDER = re.compile(r"\.\.\.|<[^>]*>|\||^[A-Z][A-Z0-9_]*$|=[A-Z][A-Z0-9_]*$")


@dataclass
class Block:
    file: Path
    line: int  # of the opening fence
    lang: str
    body: str
    marker: tuple[str, str] | None  # ("run" | "not-run", text) from the line before the fence

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(REPO)}:{self.line}"


def blocks(text: str, file: Path = REPO / "README.md") -> list[Block]:
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found = MARKER.search(before)
        out.append(Block(file, text[: m.start()].count("\n") + 1, m.group(1).lower(), m.group(2),
                         (found.group(1), found.group(2)) if found else None))
    return out


def commands(block: Block) -> list[list[str]]:
    """The plmkit argument lists of a shell block (continuation lines joined, comments dropped)."""
    if block.lang not in SHELL:
        return []
    joined = re.sub(r"\\\n\s*", " ", block.body)
    out = []
    for line in joined.splitlines():
        line = line.strip().removeprefix("$ ")
        # `<...>` placeholders may hold spaces: one token each.
        line = re.sub(r"<[^>]*>", lambda m: m.group(0).replace(" ", "_"), line)
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # VAR=value prefixes
            words = words[1:]
        if words[:1] == ["plmkit"]:
            out.append(words[1:])
        elif words[:3] == ["python", "-m", "plmkit"]:
            out.append(words[3:])
        elif words[:1] == ["torchrun"] and "-m" in words:
            at = words.index("-m")
            if words[at + 1: at + 2] == ["plmkit"]:
                out.append(words[at + 2:])
    return out


def _expand_optional(argv: list[str]) -> list[str]:
    """`[--quick]`, `[--only NAME,...]`: the optional parts are options too, checked like the others."""
    out, inside = [], False
    for word in argv:
        if word.startswith("[-"):
            word, inside = word[1:], True
        if inside and word.endswith("]"):
            word, inside = word[:-1], False
        out.append(word)
    return out


def _is_placeholder(value: str) -> bool:
    return bool(PLACEHOLDER.search(value))


def check_command(argv: list[str]) -> None:
    """Raise (PlmkitError / ConfigError) unless argv is a valid `plmkit` command line."""
    argv = [a for a in _expand_optional(argv) if a != "..."]
    if not argv or argv[0] in ("-h", "--help", "--version"):
        return
    if argv[0].startswith("<"):  # `plmkit <command> --help`: the synopsis of every command
        return
    command, node, rest = cli._resolve(argv)
    if isinstance(node, dict):
        if rest and rest[0] not in ("-h", "--help"):
            raise PlmkitError(f"'{command}' is a group of commands; '{rest[0]}' is not one of them")
        return
    if any(a in ("-h", "--help") for a in rest):
        return
    module = cli._import_recipe(command, node)
    args: list[str] = []
    i = 0
    while i < len(rest):  # a --config file that the reader supplies (not in the repository) is skipped
        if rest[i] == "--config" and i + 1 < len(rest):
            if (REPO / rest[i + 1]).is_file():
                args += ["--config", str(REPO / rest[i + 1])]
            i += 2
            continue
        if rest[i].startswith("--config="):
            if (REPO / rest[i].split("=", 1)[1]).is_file():
                args.append("--config=" + str(REPO / rest[i].split("=", 1)[1]))
            i += 1
            continue
        args.append(rest[i])
        i += 1
    # Placeholder values (DIR, N, a|b, <dir>) cannot have the option's type: give each a stand-in that
    # does, found by trying; the option names are checked either way.
    while True:
        try:
            parse(module.Config, args)
            return
        except ConfigError as e:
            text = str(e)
            if text.startswith(("unknown option", "unknown key", "unexpected argument", "missing")):
                raise
            for j, a in enumerate(args):
                if a.startswith("--") and "=" in a and _is_placeholder(a.split("=", 1)[1]) \
                        and a.split("=", 1)[0] in text:
                    del args[j]  # `--pretrained=DIR`
                    break
                if j and _is_placeholder(a) and args[j - 1].startswith("--") and args[j - 1] in text:
                    del args[j - 1: j + 1]  # `--seed N`
                    break
            else:
                raise


# ---- collected from the real docs ------------------------------------------------------------------------

ALL = [b for f in DOCS for b in blocks(f.read_text(encoding="utf-8"), f)]
COMMANDS = [(b.where, argv) for b in ALL for argv in commands(b)]
PYTHON = [b for b in ALL if b.lang in ("python", "py")]
RUN = [b for b in ALL if b.marker and b.marker[0] == "run"]


def test_the_docs_have_commands_and_snippets() -> None:
    assert len(COMMANDS) > 40 and len(PYTHON) > 10 and RUN


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[f"{w} {' '.join(a)[:60]}" for w, a in COMMANDS])
def test_documented_command_parses(where: str, argv: list[str]) -> None:
    try:
        check_command(argv)
    except PlmkitError as e:
        pytest.fail(f"{where}: `plmkit {' '.join(argv)}`: {e}", pytrace=False)


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for the repository root, with `configs/` linked in (`with_data` adds `../shared/data`)."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(root)
    torch.set_num_threads(1)
    return root


def with_data(scratch: Path, request: pytest.FixtureRequest) -> Path:
    """Link `../shared/data` beside the scratch root to the shared data (the `shared_data` fixture: it skips
    or fails as tests/conftest.py says when the data is absent), so the docs' paths work as in a clone."""
    data = request.getfixturevalue("shared_data")
    link = scratch.parent / "shared" / "data"
    if not link.exists():
        link.parent.mkdir(exist_ok=True)
        link.symlink_to(data)
    return data


def _overrides(marker: str, data: Path | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in marker.split(";"))):
        words = shlex.split(part.replace("{data}", str(data) if data else "{data}"))
        cut = next((i for i, w in enumerate(words) if w.startswith("-")), len(words))
        out[" ".join(words[:cut])] = words[cut:]
    return out


@pytest.mark.parametrize("block", RUN, ids=[b.where for b in RUN])
def test_marked_block_runs_end_to_end(block: Block, scratch: Path, capsys: pytest.CaptureFixture,
                                      request: pytest.FixtureRequest) -> None:
    configs = [REPO / c for c in re.findall(r"configs/[\w.-]+\.yaml", block.body)]
    needs_data = "{data}" in block.marker[1] or any(
        "../shared/data" in text for text in [block.body, *(c.read_text() for c in configs if c.is_file())])
    data = with_data(scratch, request) if needs_data else None
    overrides = _overrides(block.marker[1], data)
    for argv in commands(block):
        command, _, _ = cli._resolve(argv)
        code = cli.main([*argv, *overrides.get(command, [])])
        err = capsys.readouterr().err
        assert code == 0, f"{block.where}: `plmkit {' '.join(argv)}` failed: {err.strip()}"


PAGES = sorted({b.file for b in PYTHON})


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_python_snippets_run(page: Path, scratch: Path, request: pytest.FixtureRequest) -> None:
    """A page's snippets run in order in one namespace, as a reader runs them."""
    namespace: dict = {}
    for block in (b for b in PYTHON if b.file == page):
        if block.marker and block.marker[0] == "not-run":
            assert block.marker[1], f"{block.where}: say why the snippet does not run"
            continue
        if "../shared/data" in block.body:
            with_data(scratch, request)
        run_snippet(block, namespace)


def run_snippet(block: Block, namespace: dict | None = None) -> None:
    """exec a snippet as module `docs_snippet` (dataclasses look their module up in sys.modules)."""
    module = types.ModuleType("docs_snippet")
    if namespace is not None:
        module.__dict__.update(namespace)
    sys.modules["docs_snippet"] = module
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(block.body, block.where, "exec"), module.__dict__)  # noqa: S102 - the docs' own code
    finally:
        del sys.modules["docs_snippet"]
    if namespace is not None:
        namespace.update(module.__dict__)


# ---- the checker itself ----------------------------------------------------------------------------------

SYNTHETIC = """
Text.

```
plmkit pretrain --objective=clm --train.max_steps=5 --data.seq_len=64   # a comment
plmkit finetune --task=qa --pretrained=DIR \\
    --data.stride=64 --peft lora
torchrun --nproc_per_node=2 -m plmkit pretrain --config configs/gpt-small.yaml ...
plmkit tour [--quick] [--seed N]
```

<!-- not-run: illustrative -->
```python
undefined_name
```
"""


def test_checker_accepts_the_synthetic_docs() -> None:
    found = blocks(SYNTHETIC)
    assert [b.lang for b in found] == ["", "python"] and found[1].marker == ("not-run", "illustrative")
    argvs = commands(found[0])
    assert argvs[0] == ["pretrain", "--objective=clm", "--train.max_steps=5", "--data.seq_len=64"]
    assert argvs[2][:3] == ["pretrain", "--config", "configs/gpt-small.yaml"]
    for argv in argvs:
        check_command(argv)


@pytest.mark.parametrize(("renamed", "message"), [
    ("--train.max_steps=5", "unknown option --train.max_stepsz"),
    ("--data.stride=64", "unknown option --data.stridez"),
    ("pretrain", "unknown command 'pretrainz'"),
])
def test_checker_fails_when_a_documented_option_is_renamed(renamed: str, message: str) -> None:
    # The same docs after a rename in the code: the documented spelling no longer exists.
    text = SYNTHETIC.replace(renamed, renamed.replace("=", "z=", 1) if "=" in renamed else renamed + "z", 1)
    failures = []
    for argv in commands(blocks(text)[0]):
        try:
            check_command(argv)
        except PlmkitError as e:
            failures.append(str(e))
    assert len(failures) == 1 and message in failures[0]


def test_checker_fails_on_a_bad_value_and_a_snippet_error(scratch: Path) -> None:
    with pytest.raises(ConfigError, match="--train.max_steps expects int, got 'many'"):
        check_command(["pretrain", "--train.max_steps=many"])
    with pytest.raises(ConfigError, match="objective='clmm' is not one of"):
        check_command(["pretrain", "--objective=clmm"])
    snippet = blocks(SYNTHETIC.replace("<!-- not-run: illustrative -->\n", ""))[1]
    assert snippet.marker is None  # unmarked: it runs, and its error fails the test
    with pytest.raises(NameError, match="undefined_name"):
        run_snippet(snippet)


def test_run_markers_parse() -> None:
    marker = "pretrain --train.max_steps=2 --data.train_files={data}/x.txt; tokenizer train --vocab_size=300"
    assert _overrides(marker, Path("/d")) == {
        "pretrain": ["--train.max_steps=2", "--data.train_files=/d/x.txt"],
        "tokenizer train": ["--vocab_size=300"],
    }
