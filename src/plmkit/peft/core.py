"""What every PEFT method shares: finding target modules, freezing, named adapters, saving, guards.

Every method attaches by module replacement (DESIGN.md rules 11-12): it walks `named_modules()`, matches
names, and swaps in an *adapter host*, a module that keeps the frozen original and holds its adapters in
`self.adapters` (an `nn.ModuleDict`, one entry per named adapter). A host also has `active` (the adapter
name in use, or None) and `disabled` (True inside `disable_adapters`). The helpers here only rely on
those three attributes and on the marker `is_adapter_host = True`, so every method gets named adapters,
switching, disabling, adapter-only state dicts and the trainable report for free.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from plmkit.errors import CheckpointError, ConfigError, TrainingError
from plmkit.io import atomic_dir, read_safetensors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"


def is_host(module: nn.Module) -> bool:
    return getattr(module, "is_adapter_host", False) is True


def hosts(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, host) for every adapter host in the model."""
    for name, module in model.named_modules():
        if is_host(module):
            yield name, module


def split_patterns(targets: str | list[str] | tuple[str, ...]) -> list[str]:
    if isinstance(targets, str):
        targets = targets.split(",")
    return [t.strip() for t in targets if t.strip()]


def _in_head(name: str) -> bool:
    # Task heads (LM output, classifiers) are trained in full or left alone, never adapted.
    parts = name.split(".")
    return "lm_head" in parts or parts[0] == "head"


def matches(name: str, pattern: str) -> bool:
    """A bare word matches the last name component ("q_proj"); anything else is a glob on the full name."""
    if any(c in pattern for c in ".*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return name.rsplit(".", 1)[-1] == pattern


def find_targets(
    model: nn.Module, targets: str | list[str] | tuple[str, ...], method: str, linear_only: bool = True
) -> list[str]:
    """Names of the modules `targets` selects, in module order; an error lists available names when a
    pattern selects nothing. "all-linear" selects every nn.Linear outside the task head."""
    patterns = split_patterns(targets)
    if not patterns:
        raise ConfigError(f"{method}: targets is empty")
    candidates: list[str] = []
    for name, module in model.named_modules():
        if not name or _in_head(name) or ".adapters." in f".{name}." or name.endswith(".base"):
            continue
        if linear_only and not (isinstance(module, nn.Linear) or is_host(module)):
            continue
        candidates.append(name)
    if patterns == ["all-linear"]:
        found = [n for n in candidates if isinstance(model.get_submodule(n), nn.Linear)
                 or is_host(model.get_submodule(n))]
        if not found:
            raise ConfigError(f"{method}: targets 'all-linear' matched no nn.Linear in the model")
        return found
    found = []
    for pattern in patterns:
        hits = [n for n in candidates if matches(n, pattern)]
        if not hits:
            short = sorted({n.rsplit(".", 1)[-1] for n in candidates})
            raise ConfigError(
                f"{method}: target {pattern!r} matches no module; available names include "
                f"{', '.join(short[:8])}"
            )
        found.extend(h for h in hits if h not in found)
    return [n for n in candidates if n in found]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


class LinearHost(nn.Module):
    """An adapter host around a frozen nn.Linear (LoRA, IA3): the base, its named adapters, and the
    nn.Linear attributes that code reading `module.weight` or `module.in_features` expects."""

    is_adapter_host = True

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.adapters = nn.ModuleDict()
        self.active: str | None = None
        self.disabled = False
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight


def check_new_name(host: nn.Module, name: str, where: str) -> None:
    if not name or "." in name:
        raise ConfigError(f"adapter name {name!r} must be non-empty and contain no '.'")
    if name in host.adapters:
        raise ConfigError(f"{where}: adapter {name!r} already exists")


def adapter_parameters(model: nn.Module, name: str | None = None) -> list[nn.Parameter]:
    """Parameters of the named adapter (default: every host's active adapter)."""
    params: list[nn.Parameter] = []
    seen: set[int] = set()
    for _, host in hosts(model):
        key = name if name is not None else host.active
        if key is None or key not in host.adapters:
            continue
        for p in host.adapters[key].parameters():
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


SAVED_MODULES_ATTR = "peft_modules_to_save"  # on the root model: module names trained in full


def modules_to_save(model: nn.Module) -> list[str]:
    return list(getattr(model, SAVED_MODULES_ATTR, None) or [])


def mark_trainable(model: nn.Module, name: str | None = None) -> None:
    """Freeze everything, then let only the (active) adapter's parameters train, plus the modules listed
    as `modules_to_save` (a freshly initialized task head must train in full)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in adapter_parameters(model, name):
        p.requires_grad_(True)
    for where in modules_to_save(model):
        model.get_submodule(where).requires_grad_(True)


def trainable_report(model: nn.Module) -> str:
    """One line: trainable parameters, total, and the percentage (shared tensors counted once)."""
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    pct = 100.0 * trainable / max(total, 1)
    return f"trainable params: {trainable:,} of {total:,} ({pct:.4f}%)"


def adapter_names(model: nn.Module) -> list[str]:
    names: list[str] = []
    for _, host in hosts(model):
        names.extend(n for n in host.adapters if n not in names)
    return names


def set_active_adapter(model: nn.Module, name: str | None) -> None:
    """Switch every host to adapter `name` (None: no adapter) and make only its parameters trainable."""
    if name is not None and name not in adapter_names(model):
        raise ConfigError(f"no adapter named {name!r} (have: {', '.join(adapter_names(model)) or 'none'})")
    for where, host in hosts(model):
        if getattr(host, "merged", None):
            raise ConfigError(f"{where}: unmerge the adapter before switching adapters")
        host.active = name if name in host.adapters else None
    mark_trainable(model, name)


@contextlib.contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block the model computes exactly its frozen base (the RLHF reference model)."""
    touched = []
    for where, host in hosts(model):
        if getattr(host, "merged", None):
            raise ConfigError(f"{where}: adapter weights are merged into the base; unmerge first")
        touched.append((host, host.disabled))
        host.disabled = True
    try:
        yield model
    finally:
        for host, was in touched:
            host.disabled = was


def adapter_state_dict(model: nn.Module, name: str | None = None) -> dict[str, torch.Tensor]:
    """Only adapter tensors, keyed by `<host path>.<tensor>` without the adapter's own name, so a saved
    adapter loads under any name."""
    out: dict[str, torch.Tensor] = {}
    for where, host in hosts(model):
        key = name if name is not None else host.active
        if key is None or key not in host.adapters:
            continue
        prefix = f"{where}." if where else ""
        for tname, tensor in host.adapters[key].state_dict().items():
            out[f"{prefix}{tname}"] = tensor.detach()
    for where in modules_to_save(model):
        for tname, tensor in model.get_submodule(where).state_dict().items():
            out[f"{where}.{tname}"] = tensor.detach()
    return out


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor], name: str, where: str) -> None:
    """Copy a saved adapter into the already attached adapter `name`; every key and shape must match."""
    own = adapter_state_dict(model, name)
    for key, tensor in state.items():
        if key not in own:
            raise CheckpointError(f"{where}: adapter weight {key!r} has no place in this model")
        if tuple(own[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{where}: adapter weight {key!r} has shape {tuple(tensor.shape)} but this model "
                f"expects {tuple(own[key].shape)}"
            )
    missing = sorted(set(own) - set(state))
    if missing:
        raise CheckpointError(f"{where}: adapter weight {missing[0]!r} is missing")
    with torch.no_grad():
        for key, tensor in state.items():
            own[key].copy_(tensor)


# ---- what an adapter was trained on: the base weights' fingerprint and the task head -----------------


def backbone_of(model: nn.Module) -> nn.Module:
    """The encoder/decoder under a task head (`TaskModel.backbone`), or the model itself."""
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) and hasattr(model, "head") else model


def _plain_state(module: nn.Module, merged: bool) -> dict[str, torch.Tensor]:
    """The module's tensors as a plain model holds them: hosts unwrapped (`x.base.weight` -> `x.weight`),
    adapter tensors left out; with `merged`, LoRA/IA3 hosts as `merge` would leave their base."""
    host_paths = {name for name, m in module.named_modules() if is_host(m)}
    mergeable = {name: m for name, m in module.named_modules() if is_host(m) and hasattr(m, "merge")}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in module.state_dict().items():
        parts, wrapped, plain, skip = key.split("."), "", [], False
        for part in parts[:-1]:
            if wrapped in host_paths and part == "adapters":
                skip = True
                break
            if not (wrapped in host_paths and part == "base"):
                plain.append(part)
            wrapped = f"{wrapped}.{part}" if wrapped else part
        if skip:
            continue
        out[".".join(plain + parts[-1:])] = tensor
    if merged:
        import copy

        for where, host in mergeable.items():
            if host.active is None or getattr(host, "merged", False):
                continue
            twin = copy.deepcopy(host)  # one layer at a time: merge() is the one home of the arithmetic
            twin.merge()
            plain = ".".join(p for p in where.split(".") if p)
            for tname, tensor in twin.base.state_dict().items():
                out[f"{plain}.{tname}" if plain else tname] = tensor
    return out


def weights_fingerprint(model: nn.Module, merged: bool = False) -> str:
    """sha256 of the backbone's frozen weights (names, dtypes, shapes, bytes), adapters and head left out.

    The same for a plain base model and for that base with adapters attached, so an adapter can record the
    base it was trained on; `merged=True` gives what `merge_and_unload` would leave (the weights an adapter
    must not be applied to again). A BERT-family pooler is left out: fine-tuning moves it into the
    classification head, which the adapter carries.
    """
    state = _plain_state(backbone_of(model), merged)
    digest = hashlib.sha256()
    for key in sorted(state):
        if key.split(".")[0] == "pooler":
            continue
        tensor = state[key].detach().contiguous().cpu()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def head_spec(head: nn.Module) -> dict | None:
    """The constructor arguments of a task head, so an adapter directory can rebuild it (None: not one
    of the task heads)."""
    from plmkit.models.heads import SequenceClassificationHead, SpanHead, TokenClassificationHead

    if isinstance(head, SequenceClassificationHead):
        return {"class": "SequenceClassificationHead", "num_labels": head.num_labels, "pooling": head.pooling,
                "activation": head.activation_name, "dropout": head.dropout.p,
                "dropout_before_dense": head.dropout_before_dense}
    if isinstance(head, TokenClassificationHead):
        return {"class": "TokenClassificationHead", "num_labels": head.num_labels, "dropout": head.dropout.p}
    if isinstance(head, SpanHead):
        return {"class": "SpanHead", "dropout": head.dropout.p}
    return None


def with_head(model: nn.Module, spec: dict, where: str) -> nn.Module:
    """`TaskModel(backbone of model, the head spec describes)`: the task model an adapter was trained as.
    A BERT-family pooler is dropped, as fine-tuning does (the head's `dense` holds it)."""
    from dataclasses import replace

    from plmkit.models.heads import SequenceClassificationHead, SpanHead, TaskModel, TokenClassificationHead

    builders = {"SequenceClassificationHead": SequenceClassificationHead,
                "TokenClassificationHead": TokenClassificationHead, "SpanHead": SpanHead}
    args = dict(spec)
    cls = builders.get(args.pop("class", None))
    if cls is None:
        raise CheckpointError(f"{where}: unknown task head {spec.get('class')!r}")
    backbone = backbone_of(model)
    head = cls(backbone.config.d_model, **args)
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None
        backbone.config = replace(backbone.config, add_pooler=False)
    param = next(backbone.parameters())
    return TaskModel(backbone, head.to(param.device, param.dtype)).train(model.training)


def check_base(model: nn.Module, base: dict, where: str) -> None:
    """Refuse weights the adapter was not trained on, and weights it is already merged into."""
    want = base.get("fingerprint")
    if not want:
        return
    have = weights_fingerprint(model)
    if have == want:
        return
    if have == base.get("merged_fingerprint"):
        raise ConfigError(f"{where}: these weights already have the adapter merged into them; apply it "
                          f"to its base ({base.get('path') or 'the model it was trained on'}) instead")
    raise ConfigError(f"{where}: the adapter was trained on other weights ({base.get('path') or 'unknown'}, "
                      f"fingerprint {want[:12]}, these are {have[:12]}; another dtype counts as other "
                      "weights; check_base=False skips the check)")


def read_adapter_meta(path: str | os.PathLike) -> dict:
    """The whole `adapter_config.json` of an adapter directory (method, config, base, head, labels)."""
    cfg_file = Path(path) / ADAPTER_CONFIG
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no {ADAPTER_CONFIG} (not an adapter directory)")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file}: invalid JSON at line {e.lineno}: {e.msg}") from None


def save_adapter(model: nn.Module, path: str | os.PathLike, method: str, config: dict,
                 name: str | None = None, extra: dict | None = None) -> Path:
    """Write `adapter_config.json` + `adapter.safetensors` (only the adapter) into directory `path`;
    `extra` adds keys to `adapter_config.json` (the base, the head, the labels)."""
    path = Path(path)
    state = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model, name).items()}
    if not state:
        raise ConfigError("save_adapter: the model has no adapter to save")
    # the whole directory is published at once: a killed save leaves the previous adapter whole
    with atomic_dir(path, replaces=ADAPTER_CONFIG) as tmp:
        save_file(state, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        meta = {"method": method, "config": config, **(extra or {})}
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def read_adapter(path: str | os.PathLike) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """(method, config dict, tensors) of an adapter directory written by `save_adapter`."""
    path = Path(path)
    cfg_file, weights = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    meta = read_adapter_meta(path)
    for key in ("method", "config"):
        if key not in meta:
            raise CheckpointError(f"{cfg_file}: missing key {key!r}")
    if not weights.is_file():
        raise CheckpointError(f"{path}: no {ADAPTER_WEIGHTS}")
    state, _ = read_safetensors(weights)
    return meta["method"], meta["config"], state


def snapshot_trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters, to compare against after the first optimizer steps."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def check_params_changed(model: nn.Module, before: dict[str, torch.Tensor], steps: int | None = None) -> None:
    """Fail loudly when trainable parameters did not move: frozen inputs under reentrant activation
    checkpointing, or a wrapper that fell out of the graph, otherwise train nothing without any error.

    Call after at least two optimizer steps: a LoRA A matrix (or an adapter's down projection) gets a
    zero gradient on step one because its partner starts at zero.
    """
    if not before:
        raise TrainingError("no trainable parameters: every parameter is frozen")
    now = dict(model.named_parameters())
    stale = [n for n, old in before.items() if n in now and torch.equal(now[n].detach(), old)]
    if stale:
        after = f" after {steps} optimizer steps" if steps is not None else ""
        raise TrainingError(
            f"{len(stale)} of {len(before)} trainable parameters did not change{after}, e.g. {stale[0]!r} "
            "(are they in the graph and the optimizer?)"
        )
