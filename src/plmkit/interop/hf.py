"""Load and save Hugging Face (and plmkit) checkpoint directories.

`load(path)` reads `config.json`, dispatches on `model_type` through the explicit `FAMILIES` dict to a
family module (`interop/<family>.py`: `MODEL_TYPES`, `build_from_hf`, `export_to_hf`, `build_native`),
reads the weights and the tokenizer. Weights come only from safetensors (one file or a sharded index):
a `.bin` checkpoint is a pickle, and unpickling runs arbitrary code, so it is read only when the
caller passes `allow_pickle=True` (and then with `torch.load(weights_only=True)`).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from plmkit.errors import CheckpointError, TokenizerError
from plmkit.interop import bart, bert, gemma2, gpt2, llama, phi3, t5
from plmkit.interop.convert import drop_tied
from plmkit.io import atomic_dir

# model_type (config.json) -> family interop module. One line per model type.
FAMILIES: dict[str, ModuleType] = {
    "gpt2": gpt2,
    "llama": llama,
    "mistral": llama,
    "qwen2": llama,
    "qwen3": llama,
    "phi3": phi3,
    "gemma2": gemma2,
    "bert": bert,
    "roberta": bert,
    "albert": bert,
    "distilbert": bert,
    "t5": t5,
    "bart": bart,
}

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "char_tokenizer.json")


@dataclass
class Pretrained:
    """What `load` returns: the model, its tokenizer (None when the directory has none), the raw config."""

    model: nn.Module
    tokenizer: Any = None
    hf_config: dict = field(default_factory=dict)
    path: Path | None = None

    def require_tokenizer(self) -> Any:
        """The tokenizer, or a one-line error naming the directory that lacks one."""
        if self.tokenizer is None:
            raise TokenizerError(
                f"{self.path}: no tokenizer found (expected one of {', '.join(TOKENIZER_FILES)})"
            )
        return self.tokenizer


def _family(model_type: object, where: str) -> ModuleType:
    if model_type not in FAMILIES:
        known = ", ".join(sorted(FAMILIES))
        raise CheckpointError(f"{where}: unknown model_type {model_type!r} (known: {known})")
    return FAMILIES[model_type]


def read_config(path: Path) -> dict:
    file = path / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{path}: no config.json (not a checkpoint directory)")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: invalid JSON at line {e.lineno}: {e.msg}") from None


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on a corrupt file
        raise CheckpointError(f"{file}: cannot read safetensors ({e})") from None


def _read_pickle(file: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if not allow_pickle:
        raise CheckpointError(
            f"{file} is a pickle checkpoint: unpickling runs arbitrary code; convert it to safetensors "
            "or pass allow_pickle=True if you trust its source"
        )
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise CheckpointError(f"{file}: cannot read pickle checkpoint ({type(e).__name__}: {e})") from None


def _read_index(index: Path, reader: Any) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{index}: not a valid shard index ({e})") from None
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        file = index.parent / shard
        if not file.is_file():
            raise CheckpointError(f"{index}: shard {shard!r} is missing")
        state.update(reader(file))
    missing = set(weight_map) - set(state)
    if missing:
        raise CheckpointError(f"{index}: weight {sorted(missing)[0]!r} is not in its shard")
    return state


def read_state_dict(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Weights of a checkpoint directory: safetensors first, a pickle only when allowed."""
    if (path / "model.safetensors").is_file():
        return _read_safetensors(path / "model.safetensors")
    if (path / "model.safetensors.index.json").is_file():
        return _read_index(path / "model.safetensors.index.json", _read_safetensors)
    if (path / "pytorch_model.bin").is_file():
        return _read_pickle(path / "pytorch_model.bin", allow_pickle)
    if (path / "pytorch_model.bin.index.json").is_file():
        return _read_index(
            path / "pytorch_model.bin.index.json", lambda f: _read_pickle(f, allow_pickle)
        )
    raise CheckpointError(f"{path}: no weights (model.safetensors or model.safetensors.index.json)")


def load_tokenizer(path: Path) -> Any:
    """The directory's tokenizer via `plmkit.data.tokenizer.load_tokenizer`, or None when it has none."""
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None
    try:
        from plmkit.data.tokenizer import load_tokenizer as load_any
    except ImportError:
        warnings.warn(
            f"{path}: plmkit.data.tokenizer is unavailable; loading without a tokenizer", stacklevel=3
        )
        return None
    return load_any(path)


def load(path: str | os.PathLike, allow_pickle: bool = False) -> Pretrained:
    """Load a Hugging Face or plmkit checkpoint directory into a plmkit model and tokenizer."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory")
    config = read_config(path)
    where = str(path / "config.json")
    if "model_type" not in config:
        raise CheckpointError(f"{where}: missing key 'model_type'")
    family = _family(config["model_type"], where)
    state_dict = read_state_dict(path, allow_pickle)
    if "architecture" in config and isinstance(config.get("config"), dict):
        model = family.build_native(config["config"], config["architecture"])
        from plmkit.interop.convert import load_checked

        load_checked(model, state_dict, {})
    else:
        model = family.build_from_hf(config, state_dict)
    model.eval()
    return Pretrained(model=model, tokenizer=load_tokenizer(path), hf_config=config, path=path)


def save_hf(model: nn.Module, path: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write `config.json`, `model.safetensors` (and the tokenizer) in the layout transformers reads.

    The directory is written beside `path` and published in one rename (`plmkit.io.atomic_dir`): a save
    killed at any point leaves the previous export at `path` whole and loadable. The new export replaces
    the old one entirely; a non-empty directory that holds no export is refused rather than replaced.
    """
    path = Path(path)
    family = _family(getattr(model.config, "model_type", None), type(model).__name__)
    hf_config, state_dict = family.export_to_hf(model)
    state_dict = drop_tied(model, {k: v.detach().cpu().contiguous() for k, v in state_dict.items()})
    with atomic_dir(path, replaces="config.json") as tmp_dir:
        save_file(state_dict, str(tmp_dir / "model.safetensors"), metadata={"format": "pt"})
        (tmp_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp_dir)
    return path
