"""`plmkit <command> [--config FILE.yaml] [--a.b=value ...]`: run a recipe from the command line.

COMMANDS below is the whole list: a command name (or a group such as `tokenizer`) maps to a recipe module
with a docstring, a `Config` dataclass and `run(cfg) -> dict`. Modules are imported only when their command
runs, so `plmkit --help` reads each recipe's one-line summary from its source without importing torch.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import sys
from types import ModuleType

from plmkit import __version__
from plmkit.config import closest, help_text, parse
from plmkit.errors import PlmkitError

Commands = dict[str, "str | Commands"]

COMMANDS: Commands = {
    "pretrain": "plmkit.recipes.pretrain",
    "finetune": "plmkit.recipes.finetune",
    "distill": "plmkit.recipes.distill",
    "generate": "plmkit.recipes.generate",
    "eval": "plmkit.recipes.eval",
    "predict": "plmkit.recipes.predict",
    "merge": "plmkit.recipes.merge",
    "world": "plmkit.recipes.world",
    "tour": "plmkit.recipes.tour",
    "sft": "plmkit.recipes.sft",
    "reward": "plmkit.recipes.reward",
    "dpo": "plmkit.recipes.dpo",
    "ppo": "plmkit.recipes.ppo",
    "grpo": "plmkit.recipes.grpo",
    "cai": {"revise": "plmkit.recipes.cai_revise", "label": "plmkit.recipes.cai_label"},
    "tokenizer": {
        "train": "plmkit.recipes.tokenizer",
    },
    "data": {
        "prepare": "plmkit.recipes.prepare",
    },
}

_NOT_AVAILABLE = "(not available)"


def _summary(module_name: str) -> str:
    """First line of a module's docstring, read from its source so nothing heavy gets imported."""
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return _NOT_AVAILABLE
    try:
        with open(spec.origin, encoding="utf-8") as f:
            doc = ast.get_docstring(ast.parse(f.read()))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return _NOT_AVAILABLE
    return doc.strip().splitlines()[0] if doc else ""


def _listing(commands: Commands, prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for name, target in commands.items():
        if isinstance(target, dict):
            rows.extend(_listing(target, f"{prefix}{name} "))
        else:
            rows.append((prefix + name, _summary(target)))
    return rows


def usage(commands: Commands | None = None, prefix: str = "") -> str:
    rows = _listing(commands if commands is not None else COMMANDS, prefix)
    width = max(len(name) for name, _ in rows)
    lines = [
        "usage: plmkit <command> [--config FILE.yaml] [--key=value ...]",
        "       plmkit <command> --help    lists every option of a command with its default",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {summary}".rstrip() for name, summary in rows]
    return "\n".join(lines)


def _resolve(argv: list[str]) -> tuple[str, str | Commands, list[str]]:
    """Walk COMMANDS along argv: (command words, module name or a group dict, remaining args)."""
    node: str | Commands = COMMANDS
    words: list[str] = []
    rest = list(argv)
    while isinstance(node, dict) and rest and not rest[0].startswith("-"):
        word = rest.pop(0)
        if word not in node:
            where = " ".join(words)
            hint = closest(word, list(node))
            full = f"{where} {word}".strip()
            tail = f" (did you mean '{(where + ' ' + hint).strip()}'?)" if hint else ""
            raise PlmkitError(f"unknown command '{full}'{tail}; `plmkit --help` lists them")
        words.append(word)
        node = node[word]
    return " ".join(words), node, rest


def _import_recipe(command: str, module_name: str) -> ModuleType:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # Only the recipe itself missing means "not available"; a missing import inside it is a real error.
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise PlmkitError(f"command '{command}' is not available in this version ({module_name})") from e
        raise
    if not hasattr(module, "Config") or not hasattr(module, "run"):
        raise PlmkitError(f"recipe {module_name} for '{command}' needs a Config dataclass and run(cfg)")
    return module


def _print_result(result: object) -> None:
    if isinstance(result, dict) and result:
        print(json.dumps(result, indent=2, default=str, sort_keys=False))


def _leave_process_group() -> None:
    # A recipe run under torchrun joined a process group; leaving it lets the process exit cleanly. On an
    # error it is left as is: the process exits, and torchrun stops the other ranks.
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `plmkit` command; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] == "--version":
            print(f"plmkit {__version__}")
            return 0
        command, node, rest = _resolve(argv)
        if isinstance(node, dict):
            if rest and rest[0] not in ("-h", "--help"):
                raise PlmkitError(f"unexpected argument '{rest[0]}'; `plmkit --help` lists the commands")
            print(usage(node, f"{command} " if command else ""))
            return 0
        module = _import_recipe(command, node)
        if any(a in ("-h", "--help") for a in rest):
            doc = (module.__doc__ or "").strip()
            print(f"usage: plmkit {command} [--config FILE.yaml] [--key=value ...]\n")
            if doc:
                print(doc + "\n")
            print(help_text(module.Config))
            return 0
        cfg = parse(module.Config, rest)
        result = module.run(cfg)
        if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
            _print_result(result)
        _leave_process_group()
        return 0
    except PlmkitError as e:
        message = " ".join(str(e).split())  # one line, whatever the message held
        rank = f"[rank {os.environ['RANK']}] " if os.environ.get("WORLD_SIZE", "1") != "1" else ""
        print(f"error: {rank}{message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
