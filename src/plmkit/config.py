"""Configs are nested dataclasses, filled from an optional YAML file and `--a.b=value` overrides.

    @dataclass
    class Config:
        model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the network"})
        lr: float = field(default=3e-4, metadata={"help": "peak learning rate"})

    cfg = parse(Config, ["--config", "run.yaml", "--model.n_layer=4", "--lr", "1e-3", "--no-compile"])

A string field may list its valid values as `metadata={"choices": TABLE}` (a dict, whose keys count, a
sequence, or a function returning one, for a table defined further down the module): `--help` lists them
and a value outside them is an error that suggests the nearest.

A group may name one field as its shorthand (`SHORTHAND: ClassVar[str] = "method"`): then `--peft lora`
(or `peft: lora` in YAML) means `--peft.method=lora`, and `--peft.r 8` still sets the rest of the group.

Precedence: field defaults < YAML file < command-line overrides. Every value is converted to the field's
annotated type (int, float, str, bool, Path, Optional, Literal choices, list/tuple, dict, nested dataclass);
an unknown key or a value of the wrong type raises a one-line `ConfigError` that names the key (and the YAML
file it came from) and suggests the closest valid key or choice.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from plmkit.errors import ConfigError

T = TypeVar("T")

__all__ = ["parse", "load_yaml", "help_text", "to_dict", "from_dict", "option_names", "closest"]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null", "~"}


class _Cli(str):
    """A raw string typed on the command line, as opposed to a value YAML already typed."""


@dataclasses.dataclass(frozen=True)
class _Where:
    """Where a value came from, for error messages."""

    file: str | None = None  # YAML file, or None for command line / dict

    def key(self, dotted: str) -> str:
        return f"key '{dotted}' in {self.file}" if self.file else f"--{dotted}"


def _hints(cls: type) -> dict[str, Any]:
    # Resolves string annotations (`from __future__ import annotations`) against the defining module.
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return typing.get_args(tp)
    return None


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass type of a field typed `X` or `X | None`, else None."""
    if _is_dataclass_type(tp):
        return tp
    args = _union_args(tp)
    if args:
        found = [a for a in args if _is_dataclass_type(a)]
        if len(found) == 1 and all(a is type(None) or _is_dataclass_type(a) for a in args):
            return found[0]
    return None


def _init_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def option_names(cls: type, prefix: str = "") -> list[str]:
    """Every dotted option name of a config class, nested dataclasses expanded."""
    names: list[str] = []
    hints = _hints(cls)
    for f in _init_fields(cls):
        sub = _dataclass_in(hints[f.name])
        if sub is not None:
            names.extend(option_names(sub, f"{prefix}{f.name}."))
        else:
            names.append(prefix + f.name)
    return names


def _edits(a: str, b: str) -> int:
    """Edit distance counting a swap of two neighbours as one edit (optimal string alignment)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        row = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                row[j] = min(row[j], prev2[j - 2] + 1)
        prev2, prev = prev, row
    return prev[-1]


def closest(word: str, choices: list[str]) -> str | None:
    """The choice `word` is a near miss of, or None: at most one edit per three characters (one at least),
    or one is the other's prefix of two or more characters ("lrate" -> "lr"). A far guess ("optim" ->
    "sop") misleads more than no guess."""
    best: tuple[int, str] | None = None
    for choice in choices:
        distance = _edits(word.lower(), choice.lower())
        shorter, longer = sorted((word, choice), key=len)
        near = distance <= max(1, len(word) // 3) or (len(shorter) >= 2 and longer.startswith(shorter))
        if near and (best is None or distance < best[0]):
            best = (distance, choice)
    return best[1] if best else None


def _suggest(word: str, choices: list[str]) -> str | None:
    # Siblings first (same group), so "lrate" suggests "lr" rather than a longer key elsewhere.
    parent = word.rpartition(".")[0]
    siblings = [c for c in choices if c.rpartition(".")[0] == parent]
    for pool in (siblings, choices):
        close = closest(word, pool)
        if close:
            return close
    # A misspelled leaf under another group still deserves a hint: compare the last component only.
    leaf = word.rsplit(".", 1)[-1]
    by_leaf = {c.rsplit(".", 1)[-1]: c for c in choices}
    close = closest(leaf, list(by_leaf))
    return by_leaf[close] if close else None


def choices_of(f: dataclasses.Field) -> list[str] | None:
    """The valid values a field's metadata names (`choices`: dict keys, a sequence, or a function)."""
    table = f.metadata.get("choices")
    if table is None:
        return None
    if callable(table):
        table = table()
    return [str(c) for c in table]


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if isinstance(tp, type) and tp in (int, float, str, bool):
        return tp.__name__
    if tp is Path:
        return "path"
    if tp is Any:
        return "any"
    if _is_dataclass_type(tp):
        return tp.__name__
    args = _union_args(tp)
    if args:
        return "|".join(_type_name(a) for a in args)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "{" + ",".join(str(c) for c in typing.get_args(tp)) + "}"
    if origin in (list, tuple):
        inner = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"{origin.__name__}[{_type_name(inner[0]) if inner else 'any'}]"
    if origin is dict:
        k, v = typing.get_args(tp) or (Any, Any)
        return f"dict[{_type_name(k)},{_type_name(v)}]"
    return getattr(tp, "__name__", str(tp))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _convert(value: Any, tp: Any, dotted: str, where: _Where) -> Any:
    """Convert `value` (a YAML value or a `_Cli` string) to type `tp`, or raise ConfigError."""

    def fail(extra: str = "") -> ConfigError:
        got = f"'{value}'" if isinstance(value, _Cli) else f"{_shown(value)} ({type(value).__name__})"
        key = f"--{dotted}" if isinstance(value, _Cli) else where.key(dotted)
        return ConfigError(f"{key} expects {_type_name(tp)}, got {got}{extra}")

    cli = isinstance(value, _Cli)
    if tp is Any:
        return str(value) if cli else value
    args = _union_args(tp)
    if args:
        if value is None or (cli and value.strip().lower() in _NONE):
            if type(None) in args:
                return None
            raise fail()
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, dotted, where)
            except ConfigError:
                continue
        raise fail()
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if value == choice or (cli and str(choice) == value):
                return choice
        hint = _suggest(str(value), [str(c) for c in choices])
        extra = f" (did you mean '{hint}'?)" if hint else ""
        raise fail(extra)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if cli and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if cli:
            try:
                return int(value.replace("_", ""))
            except ValueError:
                # "1e6" is a common way to write a step count; accept it when it is integral.
                try:
                    as_float = float(value)
                except ValueError:
                    raise fail() from None
                if as_float.is_integer():
                    return int(as_float)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise fail() from None
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return str(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise fail()
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise fail()
    if origin in (list, tuple):
        inner = [a for a in typing.get_args(tp) if a is not Ellipsis]
        item_tp = inner[0] if inner else Any
        if cli and value.strip().startswith("["):  # YAML flow syntax: --files='[a.txt, b.txt]'
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                raise fail() from None
            if not isinstance(parsed, list):
                raise fail()
            items: list[Any] = parsed
        elif cli:
            items = [_Cli(s.strip()) for s in value.split(",")] if value.strip() else []
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise fail()
        out = [_convert(v, item_tp, f"{dotted}[{i}]", where) for i, v in enumerate(items)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        if cli:
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise fail() from None
        if not isinstance(value, dict):
            raise fail()
        return {
            _convert(k, key_tp, dotted, where): _convert(v, val_tp, f"{dotted}.{k}", where)
            for k, v in value.items()
        }
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict) and not cli:
            return _build(tp, value, None, dotted + ".", where)
        raise fail()
    if isinstance(value, tp):
        return value
    raise fail()


def _build(cls: type[T], data: dict[str, Any], base: Any, prefix: str, where: _Where) -> T:
    """Instantiate `cls` from a (nested) mapping, starting from `base` (an instance) or the defaults."""
    hints = _hints(cls)
    fields = {f.name: f for f in _init_fields(cls)}
    for key in data:
        if key not in fields:
            dotted = prefix + str(key)
            valid = [prefix + n for n in option_names(cls)]
            hint = _suggest(dotted, valid)
            tail = ""
            if hint:
                tail = f" (did you mean '{hint}'?)" if where.file else f" (did you mean --{hint}?)"
            what = f"unknown key '{dotted}' in {where.file}" if where.file else f"unknown option --{dotted}"
            raise ConfigError(what + tail)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        tp = hints[name]
        current = getattr(base, name) if base is not None else _MISSING
        if name not in data:
            if current is not _MISSING:
                kwargs[name] = current
            continue
        value = data[name]
        sub = _dataclass_in(tp)
        shorthand = _shorthand(tp)
        if shorthand is not None and isinstance(value, str) and value.strip().lower() not in _NONE:
            value = {shorthand: value}
        if sub is not None and isinstance(value, dict) and not isinstance(value, _Cli):
            if current is _MISSING:
                current = _field_default(f)
            start = current if isinstance(current, sub) else None
            kwargs[name] = _build(sub, value, start, f"{prefix}{name}.", where)
        else:
            if sub is not None and isinstance(value, _Cli) and value.strip().lower() not in _NONE:
                group = f"--{prefix}{name}"
                raise ConfigError(f"{group} is a group of options; set its fields as {group}.KEY")
            kwargs[name] = _convert(value, tp, prefix + name, where)
            choices = choices_of(f)
            if choices is not None and str(kwargs[name]) not in choices:
                key = f"--{prefix}{name}" if isinstance(value, _Cli) else where.key(prefix + name)
                hint = closest(str(kwargs[name]), choices)
                tail = f" (did you mean '{hint}'?)" if hint else ""
                raise ConfigError(f"{key}={kwargs[name]!r} is not one of {', '.join(choices)}{tail}")
    missing = [n for n, f in fields.items() if n not in kwargs and _field_default(f) is _MISSING]
    if missing:
        raise ConfigError(f"missing required option --{prefix + missing[0]}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        # __post_init__ validation: keep the message, add which group it came from.
        group = prefix.rstrip(".") or cls.__name__
        raise ConfigError(f"{group}: {e}") from None


_MISSING: Any = object()


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _MISSING


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; missing files, bad YAML or a non-mapping top level raise ConfigError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {path}{line}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of options, got {type(data).__name__}")
    return data


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _field_type(cls: type, dotted: str) -> Any:
    """The annotated type of a dotted option, or _MISSING if it does not exist."""
    tp: Any = cls
    for part in dotted.split("."):
        sub = _dataclass_in(tp)
        if sub is None:
            return _MISSING
        hints = _hints(sub)
        if part not in {f.name for f in _init_fields(sub)}:
            return _MISSING
        tp = hints[part]
    return tp


def _expand_shorthands(cls: type, tree: dict[str, Any]) -> None:
    """Rewrite YAML's `peft: lora` as `peft: {method: lora}` so later `--peft.r` overrides merge into it."""
    hints = _hints(cls)
    for f in _init_fields(cls):
        value = tree.get(f.name)
        shorthand = _shorthand(hints[f.name])
        if shorthand is not None and isinstance(value, str) and value.strip().lower() not in _NONE:
            tree[f.name] = {shorthand: value}
        elif isinstance(value, dict) and (sub := _dataclass_in(hints[f.name])) is not None:
            _expand_shorthands(sub, value)


def _shorthand(tp: Any) -> str | None:
    """The field a group dataclass takes its bare value into (`--peft lora`), or None."""
    sub = _dataclass_in(tp)
    name = getattr(sub, "SHORTHAND", None) if sub is not None else None
    return name if isinstance(name, str) else None


def _is_bool(tp: Any) -> bool:
    args = _union_args(tp)
    return tp is bool or (args is not None and set(args) == {bool, type(None)})


def _unknown_option(cls: type, dotted: str) -> ConfigError:
    hint = _suggest(dotted, option_names(cls))
    tail = f" (did you mean --{hint}?)" if hint else ""
    return ConfigError(f"unknown option --{dotted}{tail}")


def _parse_argv(cls: type, argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """Split argv into the --config path and {dotted: _Cli value} overrides."""
    config_path: str | None = None
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument '{arg}': options look like --key=value")
        name, eq, raw = arg[2:].partition("=")
        if name == "config":
            if not eq:
                if i >= len(argv):
                    raise ConfigError("--config needs a YAML file path")
                raw = argv[i]
                i += 1
            config_path = raw
            continue
        tp = _field_type(cls, name)
        if tp is _MISSING and not eq and name.startswith("no-"):
            positive = name[3:]
            if _is_bool(_field_type(cls, positive)):
                overrides[positive] = False
                continue
        if tp is _MISSING:
            raise _unknown_option(cls, name)
        shorthand = _shorthand(tp)
        if shorthand is not None:
            name = f"{name}.{shorthand}"
            tp = _field_type(cls, name)
        is_bool = _is_bool(tp)
        if not eq:
            if is_bool:
                # A bare flag means true; an explicit "--flag false" is also accepted.
                if i < len(argv) and argv[i].strip().lower() in _TRUE | _FALSE:
                    raw = argv[i]
                    i += 1
                else:
                    overrides[name] = True
                    continue
            else:
                if i >= len(argv) or (argv[i].startswith("--") and len(argv[i]) > 2):
                    raise ConfigError(f"option --{name} needs a value ({_type_name(tp)})")
                raw = argv[i]
                i += 1
        overrides[name] = _Cli(raw)
    return config_path, overrides


def parse(cls: type[T], argv: list[str] | None = None) -> T:
    """A `cls` instance from defaults, an optional `--config file.yaml`, then `--a.b=value` overrides."""
    argv = list(argv or [])
    config_path, overrides = _parse_argv(cls, argv)
    # One tree, YAML values overwritten by command-line ones; a value's type (_Cli or not) says where it
    # came from, so errors still name the YAML file or the option. Building once lets the command line
    # supply a required option the file leaves out.
    tree: dict[str, Any] = load_yaml(config_path) if config_path is not None else {}
    _expand_shorthands(cls, tree)
    for dotted, value in overrides.items():
        _set_dotted(tree, dotted, value)
    return _build(cls, tree, None, "", _Where(file=config_path))


def from_dict(cls: type[T], data: dict[str, Any], source: str | None = None) -> T:
    """Inverse of `to_dict`; `source` (a file name) is named in error messages."""
    return _build(cls, data, None, "", _Where(file=source or "config"))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON/YAML-safe nested dict of a config instance (paths as strings, tuples as lists)."""
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"to_dict expects a dataclass instance, got {type(cfg).__name__}")
    return _plain(cfg)


def _default_text(value: Any) -> str:
    if value is _MISSING:
        return "required"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) if value else "[]"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _help_rows(cls: type, prefix: str, base: Any) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    hints = _hints(cls)
    for f in _init_fields(cls):
        tp = hints[f.name]
        value = getattr(base, f.name) if base is not None else _field_default(f)
        doc = f.metadata.get("help", "")
        choices = choices_of(f)
        if choices is not None:
            doc = f"{doc}: {', '.join(choices)}" if doc else f"one of {', '.join(choices)}"
        sub = _dataclass_in(tp)
        if sub is not None:
            rows.append((f"{prefix}{f.name}", "", "", f"[group] {doc}".rstrip()))
            start = value if isinstance(value, sub) else None
            rows.extend(_help_rows(sub, f"{prefix}{f.name}.", start))
        else:
            rows.append((f"--{prefix}{f.name}", _type_name(tp), _default_text(value), doc))
    return rows


def help_text(cls: type) -> str:
    """One line per option: name, type, default, the field's metadata['help']."""
    rows = _help_rows(cls, "", None)
    width_name = max((len(r[0]) for r in rows), default=0)
    width_type = max((len(r[1]) for r in rows), default=0)
    lines = ["options (defaults < --config FILE.yaml < --key=value; booleans also as --flag / --no-flag):"]
    lines.append(f"  {'--config':<{width_name}}  {'path':<{width_type}}  YAML file with nested options")
    for name, tp, default, doc in rows:
        if not tp:
            lines.append(f"  {name + ':':<{width_name}}  {'':<{width_type}}  {doc}".rstrip())
            continue
        text = f"{doc} (default: {default})" if doc else f"(default: {default})"
        lines.append(f"  {name:<{width_name}}  {tp:<{width_type}}  {text}")
    return "\n".join(lines)
