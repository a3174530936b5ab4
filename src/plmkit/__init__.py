"""plmkit: pretrain, fine-tune, adapt, prompt and align language models in readable PyTorch."""

from __future__ import annotations

__version__ = "0.1.0"

# The public API, imported on first use (PEP 562) so that `plmkit --help` and `import plmkit.config`
# do not wait for torch: add a name here as `name: "module"`.
_PUBLIC = {
    "Pretrained": "plmkit.interop.hf",
    "load": "plmkit.interop.hf",
    "save_hf": "plmkit.interop.hf",
    "generate": "plmkit.models.generation",
    "quantize": "plmkit.models.quantize",
    "save_quantized": "plmkit.interop.quantized",
    "load_quantized": "plmkit.interop.quantized",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib

        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'plmkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
