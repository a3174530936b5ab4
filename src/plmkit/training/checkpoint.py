"""Atomic, verifiable, resumable training checkpoints.

Layout of `out_dir/step-N/`:

    model.safetensors       weights (tied aliases stored once, listed in the metadata and re-tied on load)
    optimizer.safetensors   optimizer state tensors; param groups and non-tensor state as JSON metadata
    config.json             {"model_type", "architecture", "config"} plus the caller's extra configs
    trainer_state.json      step, sampler position, scheduler and grad-scaler state, every RNG state per rank
    <tokenizer files>       when a tokenizer is given
    manifest.json           sha256 and size of every file above; written last

Everything is written into `out_dir/.tmp-step-N`, fsynced, and renamed to `step-N` in one `os.rename`,
so a run killed mid-write leaves only a `.tmp-*` directory that nothing ever loads. Loading verifies every
hash and parses every file before it touches the model, so a corrupt checkpoint is reported, never
half-loaded.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from plmkit.errors import CheckpointError
from plmkit.io import fsync_dir, fsync_file, read_safetensors
from plmkit.training import distributed

MANIFEST = "manifest.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


# ----------------------------------------------------------------------------------------------- RNG state


def _b64(tensor: Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def capture_rng() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and CUDA generator states, as JSON-ready values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# ----------------------------------------------------------------------------------- state dicts to tensors


def _is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _full_model_state(model: nn.Module) -> dict[str, Tensor]:
    if _is_sharded(model):  # FSDP2: every rank takes part in gathering the full tensors
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return model.state_dict()


def _full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(model, optimizer, options=options)
    return optimizer.state_dict()


def _dedup_tensors(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Drop aliases of one tensor (tied weights), which safetensors refuses; return {alias: kept name}."""
    kept: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, tensor in state.items():
        tensor = tensor.detach()
        ptr = tensor.untyped_storage().data_ptr()
        key = (ptr, tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
        if key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        # a different view of an already saved storage must become its own copy
        tensor = tensor.cpu().contiguous().clone() if ptr in storages else tensor.cpu().contiguous()
        storages.add(ptr)
        kept[name] = tensor
    return kept, aliases


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, str]]:
    tensors: dict[str, Tensor] = {}
    extra: dict[str, dict[str, Any]] = {}
    keys = list(state["state"])
    for key, param_state in state["state"].items():
        for name, value in param_state.items():
            if isinstance(value, Tensor):
                tensors[f"state.{key}.{name}"] = value.detach().cpu().contiguous()
            else:
                extra.setdefault(str(key), {})[name] = value
    key_type = "int" if all(isinstance(k, int) for k in keys) else "str"
    metadata = {
        "format": "plmkit-optimizer",
        "key_type": key_type,
        "keys": json.dumps([str(k) for k in keys]),
        "param_groups": json.dumps(state["param_groups"]),
        "extra_state": json.dumps(extra),
    }
    return tensors, metadata


def _unflatten_optimizer(tensors: dict[str, Tensor], metadata: dict[str, str]) -> dict[str, Any]:
    convert = int if metadata["key_type"] == "int" else str
    extra = json.loads(metadata["extra_state"])
    state: dict[Any, dict[str, Any]] = {
        convert(k): dict(extra.get(k, {})) for k in json.loads(metadata["keys"])
    }
    for flat, tensor in tensors.items():
        key, name = flat[len("state.") :].rsplit(".", 1)
        state[convert(key)][name] = tensor
    return {"state": state, "param_groups": json.loads(metadata["param_groups"])}


def model_description(model: nn.Module) -> dict[str, Any]:
    """The config.json core: `{"model_type", "architecture", "config"}` from a dataclass `model.config`."""
    config = getattr(model, "config", None)
    cls = type(model)
    if cls.__name__.startswith("FSDP"):  # fully_shard swaps in a subclass `FSDP<Name>(FSDPModule, <Name>)`
        cls = cls.__mro__[2] if len(cls.__mro__) > 2 else cls
    description: dict[str, Any] = {"architecture": cls.__name__}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        description["model_type"] = getattr(config, "model_type", None)
        description["config"] = dataclasses.asdict(config)
    return description


# ------------------------------------------------------------------------------------------------- writing


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")
    fsync_file(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def step_dirs(out_dir: str | Path) -> list[tuple[int, Path]]:
    """`(step, path)` of every `step-N` directory in `out_dir`, oldest first.

    Only a finished save renames into `step-N`, so each of these should be complete; one that is not was
    damaged afterwards, and `find_latest` reports it rather than skipping it.
    """
    out = Path(out_dir)
    if not out.is_dir():
        return []
    found = []
    for child in out.iterdir():
        match = STEP_DIR.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def save_checkpoint(
    out_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    batches: Any,
    step: int,
    rng: list[dict[str, Any]] | None = None,
    configs: dict[str, Any] | None = None,
    keep_last: int = 0,
    tokenizer: Any = None,
) -> Path:
    """Write `out_dir/step-{step}` atomically and return its path; every rank calls it, rank 0 writes.

    `model` is the unwrapped module (not the DDP wrapper); `rng` holds each rank's `capture_rng()` (this
    process's state when None). With `keep_last > 0`, the oldest complete checkpoints beyond that number are
    removed, only after the new one is published.
    """
    model_state = _full_model_state(model)  # collective under FSDP2; empty on ranks other than 0
    optim_state = _full_optimizer_state(model, optimizer)
    out = Path(out_dir)
    final = out / f"step-{step}"
    if distributed.dist_info().is_main:
        model_state, aliases = _dedup_tensors(model_state)
        optim_tensors, optim_meta = _flatten_optimizer(optim_state)
        if final.exists():
            raise CheckpointError(f"{final}: already exists; refusing to overwrite a checkpoint")
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".tmp-step-*"):  # left by a run killed mid-write; never published
            shutil.rmtree(stale)
        tmp = out / f".tmp-step-{step}"
        tmp.mkdir()
        save_file(model_state, tmp / "model.safetensors", metadata={"aliases": json.dumps(aliases)})
        fsync_file(tmp / "model.safetensors")
        save_file(optim_tensors, tmp / "optimizer.safetensors", metadata=optim_meta)
        fsync_file(tmp / "optimizer.safetensors")
        _write_json(tmp / "config.json", {**model_description(model), **(configs or {})})
        trainer_state = {
            "step": step,
            "batches": batches.state_dict() if batches is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng if rng is not None else [capture_rng()],
        }
        _write_json(tmp / "trainer_state.json", trainer_state)
        if tokenizer is not None:
            tokenizer.save(tmp)
            for written in tmp.iterdir():
                if written.is_file():
                    fsync_file(written)
        files = {
            p.name: {"sha256": _sha256(p), "size": p.stat().st_size}
            for p in sorted(tmp.iterdir())
            if p.is_file()
        }
        _write_json(tmp / MANIFEST, {"format": "plmkit-checkpoint", "step": step, "files": files})
        fsync_dir(tmp)
        os.rename(tmp, final)
        fsync_dir(out)
        if keep_last > 0:
            published = [(n, p) for n, p in step_dirs(out) if (p / MANIFEST).is_file()]
            for _, old in published[:-keep_last]:
                shutil.rmtree(old)
    distributed.barrier()
    return final


# ------------------------------------------------------------------------------------------------- reading


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check the manifest's size and sha256 of every file; return the manifest or raise CheckpointError."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{manifest_path}: missing; the checkpoint is incomplete")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({exc})") from None
    for name in ("model.safetensors", "trainer_state.json"):
        if name not in files:
            raise CheckpointError(f"{manifest_path}: does not list {name}")
    for name, expected in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing from the checkpoint")
        size = file.stat().st_size
        if size != expected["size"]:
            raise CheckpointError(
                f"{file}: truncated or altered ({size} bytes, manifest says {expected['size']})"
            )
        if _sha256(file) != expected["sha256"]:
            raise CheckpointError(f"{file}: sha256 does not match the manifest (corrupt file)")
    return manifest


def find_latest(out_dir: str | Path) -> Path | None:
    """The newest published checkpoint in `out_dir`, verified; None when there is none.

    A newest checkpoint that fails verification raises CheckpointError naming the bad file instead of
    silently falling back, so no work is lost unnoticed: move that directory aside to resume from the
    one before it.
    """
    found = step_dirs(out_dir)
    if not found:
        return None
    step, path = found[-1]
    try:
        verify_checkpoint(path)
    except CheckpointError as exc:
        previous = f"; move it aside to resume from {found[-2][1].name}" if len(found) > 1 else ""
        raise CheckpointError(f"{exc}{previous}") from None
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc})") from None


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    batches: Any = None,
    restore_rng_state: bool = True,
) -> dict[str, Any]:
    """Restore everything from checkpoint `path` and return its trainer state.

    All files are verified and parsed, and every weight name and shape checked against `model`, before
    any state is changed: a bad checkpoint raises CheckpointError naming the file and leaves the run
    as it was.
    """
    path = Path(path)
    verify_checkpoint(path)
    weights, metadata = read_safetensors(path / "model.safetensors")
    for alias, name in json.loads(metadata.get("aliases", "{}")).items():
        weights[alias] = weights[name]
    expected = model.state_dict()
    model_file = path / "model.safetensors"
    for name, tensor in expected.items():
        if name not in weights:
            raise CheckpointError(f"{model_file}: missing weight {name!r}")
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{model_file}: weight {name!r} has shape {tuple(weights[name].shape)}, "
                f"the model expects {tuple(tensor.shape)}"
            )
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        raise CheckpointError(f"{model_file}: unexpected weight {unexpected[0]!r} (model differs)")
    optimizer_state = None
    if optimizer is not None:
        optim_file = path / "optimizer.safetensors"
        if not optim_file.is_file():
            raise CheckpointError(f"{optim_file}: missing; this checkpoint holds no optimizer state")
        tensors, optim_meta = read_safetensors(optim_file)
        try:
            optimizer_state = _unflatten_optimizer(tensors, optim_meta)
        except (KeyError, ValueError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{optim_file}: malformed optimizer state ({exc})") from None
    trainer_state = _read_json(path / "trainer_state.json")
    if not isinstance(trainer_state, dict) or "step" not in trainer_state:
        raise CheckpointError(f"{path / 'trainer_state.json'}: has no 'step'")

    # verified: now change state; the sampler goes first because it validates its own state and may refuse
    if batches is not None and trainer_state.get("batches") is not None:
        batches.load_state_dict(trainer_state["batches"])
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, weights, options=options)
        if optimizer is not None:
            set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
    else:
        model.load_state_dict(weights, strict=True)
        if optimizer is not None:
            optimizer.load_state_dict(optimizer_state)
    if scheduler is not None and trainer_state.get("scheduler") is not None:
        scheduler.load_state_dict(trainer_state["scheduler"])
    if scaler is not None and trainer_state.get("scaler"):
        scaler.load_state_dict(trainer_state["scaler"])
    if restore_rng_state and trainer_state.get("rng"):
        states = trainer_state["rng"]
        rank = distributed.dist_info().rank
        restore_rng(states[rank] if rank < len(states) else states[0])
    return trainer_state
