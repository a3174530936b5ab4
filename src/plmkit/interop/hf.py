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
from safetensors.torch import save_file
from torch import nn

from plmkit.errors import CheckpointError, TokenizerError
from plmkit.interop import bart, bert, gemma2, gpt2, llama, phi3, t5
from plmkit.interop.convert import drop_tied
from plmkit.io import atomic_dir, read_safetensors

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
# generation_config.json keys that `plmkit.generate` takes as defaults (the same names as its keywords).
GENERATION_KEYS = ("do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "num_beams",
                   "length_penalty", "eos_token_id", "pad_token_id")


@dataclass
class Pretrained:
    """What `load` returns: the model, its tokenizer (None when the directory has none), the raw config."""

    model: nn.Module
    tokenizer: Any = None
    hf_config: dict = field(default_factory=dict)
    path: Path | None = None
    generation_config: dict = field(default_factory=dict)  # also set as `model.generation_config`

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


def _header_tensors(file: Path) -> dict[str, torch.Tensor]:
    """Meta tensors with the shapes a safetensors file declares: its header only, no data read."""
    try:
        with open(file, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= 100_000_000:
                raise ValueError(f"header length {size}")
            header = json.loads(f.read(size))
        return {
            key: torch.empty(info["shape"], dtype=torch.float32, device="meta")
            for key, info in header.items()
            if key != "__metadata__"
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{file}: cannot read safetensors header ({e})") from None


def read_header(path: Path) -> dict[str, torch.Tensor] | None:
    """The shapes of a safetensors checkpoint's weights as meta tensors (None for a pickle checkpoint)."""
    if (path / "model.safetensors").is_file():
        return _header_tensors(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return _read_index(index, _header_tensors)
    return None


def read_generation_config(path: Path) -> dict:
    """The sampling defaults of a checkpoint's generation_config.json, as `plmkit.generate` keywords.

    Keys the file leaves unset take transformers' own defaults where they differ from plmkit's (top_k
    50 when sampling), so a checkpoint generates as it does under `model.generate` in transformers.
    """
    file = path / "generation_config.json"
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: invalid JSON at line {e.lineno}: {e.msg}") from None
    out = {key: data[key] for key in GENERATION_KEYS if isinstance(data, dict) and data.get(key) is not None}
    if out.get("do_sample") and "top_k" not in out:
        out["top_k"] = 50
    return out


def read_state_dict(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Weights of a checkpoint directory: safetensors first, a pickle only when allowed."""
    if (path / "model.safetensors").is_file():
        return read_safetensors(path / "model.safetensors")[0]
    if (path / "model.safetensors.index.json").is_file():
        return _read_index(path / "model.safetensors.index.json", lambda f: read_safetensors(f)[0])
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
    header = read_header(path)
    if header is not None:
        # Build on the meta device against the header's shapes first: a config that disagrees with the
        # weights (a vocabulary of 10^10, say) fails here with the weight's name, before any allocation.
        try:
            with torch.device("meta"):
                _build(family, config, header)
        except (NotImplementedError, RuntimeError):
            pass  # a family whose conversion needs real data; the real build below checks shapes too
    model = _build(family, config, read_state_dict(path, allow_pickle))
    model.eval()
    generation_config = read_generation_config(path)
    if generation_config:
        model.generation_config = generation_config
    return Pretrained(model=model, tokenizer=load_tokenizer(path), hf_config=config, path=path,
                      generation_config=generation_config)


def _build(family: ModuleType, config: dict, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    if "architecture" in config and isinstance(config.get("config"), dict):
        model = family.build_native(config["config"], config["architecture"])
        from plmkit.interop.convert import load_checked

        load_checked(model, state_dict, {})
        return model
    return family.build_from_hf(config, state_dict)


def parse_size(size: int | str) -> int:
    """Bytes from 5_000_000_000, "5GB" (10^9) or "5GiB" (2^30), as transformers' max_shard_size reads them."""
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    text = size.strip().upper()
    for unit, scale in units.items():
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * scale)
            except ValueError:
                break
    raise CheckpointError(f"max_shard_size {size!r} is not a size such as 5GB, 500MB or 2GiB")


def shard(state_dict: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Split in order into shards of at most `max_bytes` (a tensor larger than that gets its own shard)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    used = 0
    for key, tensor in state_dict.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and used + size > max_bytes:
            shards.append({})
            used = 0
        shards[-1][key] = tensor
        used += size
    return shards


def save_hf(
    model: nn.Module, path: str | os.PathLike, tokenizer: Any = None, max_shard_size: int | str = "5GB"
) -> Path:
    """Write `config.json`, `model.safetensors` (and the tokenizer) in the layout transformers reads.

    Weights larger than `max_shard_size` (bytes, or "5GB" / "500MB" / "2GiB") go into
    `model-0000i-of-0000N.safetensors` shards with a `model.safetensors.index.json`, as transformers
    writes them. A model with a `generation_config` (from `plmkit.load`) gets its generation_config.json.

    The directory is written beside `path` and published in one rename (`plmkit.io.atomic_dir`): a save
    killed at any point leaves the previous export at `path` whole and loadable. The new export replaces
    the old one entirely; a non-empty directory that holds no export is refused rather than replaced.
    """
    path = Path(path)
    family = _family(getattr(model.config, "model_type", None), type(model).__name__)
    hf_config, state_dict = family.export_to_hf(model)
    for role in ("bos", "eos"):  # the tokenizer's special ids, where the family left them open
        key, token_id = f"{role}_token_id", getattr(tokenizer, f"{role}_id", None)
        if key in hf_config and hf_config[key] is None and token_id is not None:
            hf_config[key] = token_id
    state_dict = drop_tied(model, {k: v.detach().cpu().contiguous() for k, v in state_dict.items()})
    shards = shard(state_dict, parse_size(max_shard_size))
    with atomic_dir(path, replaces="config.json") as tmp_dir:
        if len(shards) == 1:
            save_file(state_dict, str(tmp_dir / "model.safetensors"), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, part in enumerate(shards, 1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(part, str(tmp_dir / name), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(part, name))
            total = sum(t.numel() * t.element_size() for t in state_dict.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        generation_config = getattr(model, "generation_config", None)
        if generation_config:
            (tmp_dir / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp_dir)
    return path
