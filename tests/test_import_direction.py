"""Imports go one way (DESIGN.md, docs/internals.md): nothing below the commands imports `plmkit.recipes`
or `plmkit.cli`, and the package never imports a reference library (those are test and bench references)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "plmkit"
# The CLI (and `python -m plmkit`) runs recipes; plmkit.text2text re-exports names that moved into recipes/.
MAY_IMPORT_RECIPES = {SRC / "cli.py", SRC / "__main__.py", SRC / "text2text.py"}
REFERENCES = ("transformers", "peft", "trl", "lm_eval", "sentence_transformers")


def imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


MODULES = sorted(p for p in SRC.rglob("*.py") if "recipes" not in p.relative_to(SRC).parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_below_the_commands_imports_them(path: Path) -> None:
    if path in MAY_IMPORT_RECIPES:
        return
    upward = [m for m in imported_modules(path) if m.startswith(("plmkit.recipes", "plmkit.cli"))]
    assert not upward, f"{path.relative_to(SRC)} imports {upward}"


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_the_package_imports_no_reference_library(path: Path) -> None:
    found = [m for m in imported_modules(path) if m.split(".")[0] in REFERENCES]
    assert not found, f"{path.relative_to(SRC)} imports {found}"


def test_the_scan_sees_a_call_time_import(tmp_path: Path) -> None:
    # The old reward-model builder imported recipes.finetune inside a function; the scan must catch that.
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from plmkit.recipes.finetune import build_task_model\n")
    assert imported_modules(probe) == ["plmkit.recipes.finetune"]
