"""Save and load an int8 weight-only model (`plmkit.quantize`) as safetensors with its scales.

A quantized export is a directory with:

    config.json        {"model_type", "architecture", "config": the family config,
                        "quantization": {"method": "int8", "modules": [names of the Int8Linear layers]}}
    model.safetensors  plmkit's own state dict: `<module>.weight_int8` (int8), `<module>.weight_scale` (fp32)
                       for each quantized layer, every other tensor as it was (tied tensors stored once)
    tokenizer files    when a tokenizer is given

plmkit names, not Hugging Face's: transformers has no reader for this layout, and a round trip through
`load_quantized` is exact (the same int8 weights and scales, so the same logits).

    plmkit.quantize(model, "int8"); save_quantized(model, "runs/gpt-int8", tokenizer)
    loaded = load_quantized("runs/gpt-int8")
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from plmkit.errors import CheckpointError
from plmkit.interop.convert import drop_tied, load_checked
from plmkit.models.quantize import Int8Linear, prepare_quantized


def is_quantized_dir(path: str | os.PathLike) -> bool:
    """True when `path` holds a quantized export (its config.json has a "quantization" entry)."""
    file = Path(path) / "config.json"
    try:
        return "quantization" in json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def _architecture(model: nn.Module) -> str:
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(model, "head") or not hasattr(model.head, "lm_head"):
        raise CheckpointError(
            f"save_quantized saves language models (a backbone with an LM head), got {type(model).__name__}"
        )
    return "seq2seq_lm" if hasattr(backbone, "decode") else "causal_lm"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_quantized(model: nn.Module, path: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write a quantized model (and its tokenizer) to `path`, atomically: the files are written and synced in
    a temporary directory beside it, which is then renamed into place (an earlier export there is replaced
    only once the new one is complete; a non-empty directory that is no export is refused)."""
    path = Path(path)
    names = [name for name, module in model.named_modules() if isinstance(module, Int8Linear)]
    if not names:
        raise CheckpointError("save_quantized: the model has no Int8Linear layers "
                              "(call plmkit.quantize first)")
    config = model.config
    if not dataclasses.is_dataclass(config):
        raise CheckpointError(f"save_quantized: {type(model).__name__}.config is not a plmkit family config")
    if path.exists() and any(path.iterdir()) and not (path / "config.json").exists():
        raise CheckpointError(f"{path}: exists, is not empty and holds no export; refusing to replace it")
    description = {
        "model_type": config.model_type,
        "architecture": _architecture(model),
        "config": dataclasses.asdict(config),
        "quantization": {"method": "int8", "modules": names},
    }
    state = drop_tied(model, {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(description, indent=1) + "\n", encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save(tmp)
        for file in tmp.iterdir():
            _fsync(file)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
        tmp.rename(path)
        _fsync(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_quantized(path: str | os.PathLike) -> Any:
    """A quantized export -> `plmkit.Pretrained` (model in eval mode, tokenizer when present)."""
    from plmkit.interop.hf import FAMILIES, Pretrained, load_tokenizer

    path = Path(path)
    file = path / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise CheckpointError(f"{file}: {e.strerror}") from None
    except ValueError as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None
    quant = config.get("quantization")
    if not isinstance(quant, dict) or "modules" not in quant:
        raise CheckpointError(f"{file}: no 'quantization' entry; load it with plmkit.load")
    family = FAMILIES.get(config.get("model_type"))
    if family is None:
        raise CheckpointError(f"{file}: unknown model_type {config.get('model_type')!r}")
    weights = path / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(f"{weights}: missing")
    model = family.build_native(config["config"], config["architecture"])
    prepare_quantized(model, list(quant["modules"]), quant.get("method", "int8"))
    load_checked(model, load_file(str(weights)), {})
    model.eval()
    return Pretrained(model=model, tokenizer=load_tokenizer(path), hf_config=config, path=path)
