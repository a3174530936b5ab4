"""Parameter-efficient fine-tuning by module replacement: LoRA, bottleneck adapters, prompt tuning,
prefix tuning and IA3, with named adapters, switching, disabling, merging and adapter-only checkpoints.

    model = apply_peft(model, "lora", LoRAConfig(r=8, targets="q_proj,v_proj"))
    print(trainable_report(model))
    ...train...
    save_adapter(model, "out/adapter")
    with disable_adapters(model):          # the frozen base, e.g. as the RLHF reference model
        ref_logits = model(input_ids)
    merge_and_unload(model)                # LoRA / IA3 folded into plain nn.Linear weights
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from plmkit.errors import CheckpointError, ConfigError
from plmkit.peft import core
from plmkit.peft.adapters import AdapterOutput, BottleneckConfig, apply_adapters
from plmkit.peft.core import (
    adapter_names,
    adapter_parameters,
    adapter_state_dict,
    check_params_changed,
    disable_adapters,
    mark_trainable,
    set_active_adapter,
    snapshot_trainable,
    trainable_report,
)
from plmkit.peft.ia3 import IA3Config, IA3Linear, apply_ia3
from plmkit.peft.lora import LoRAConfig, LoRALinear, apply_lora, merge_lora, unmerge_lora
from plmkit.peft.prefix_tuning import PrefixTuningConfig, apply_prefix_tuning, fold_prefix
from plmkit.peft.prompt_tuning import PromptTunedBackbone, PromptTuningConfig, apply_prompt_tuning

__all__ = [
    "METHODS", "Method", "PeftOptions", "LoRAConfig", "BottleneckConfig", "PromptTuningConfig",
    "PrefixTuningConfig", "IA3Config", "apply_peft", "apply_lora", "apply_adapters", "apply_prompt_tuning",
    "apply_prefix_tuning", "apply_ia3", "fold_prefix", "merge_lora", "unmerge_lora", "merge_and_unload",
    "trainable_report", "disable_adapters", "set_active_adapter", "adapter_names", "adapter_parameters",
    "adapter_state_dict", "mark_trainable", "snapshot_trainable", "check_params_changed", "save_adapter",
    "load_adapter", "options_to_config",
]

REGISTRY_ATTR = "peft_adapters"  # on the root model: adapter name -> (method, config dict)


@dataclass(frozen=True)
class Method:
    config: type
    apply: Callable[..., nn.Module]


def _apply_prompt(model: nn.Module, cfg: PromptTuningConfig, name: str, tokenizer: Any = None) -> nn.Module:
    return apply_prompt_tuning(model, cfg, name, tokenizer=tokenizer)


# The PEFT method choices (`--peft.method`): name -> config dataclass and attach function.
METHODS: dict[str, Method] = {
    "lora": Method(LoRAConfig, lambda m, c, n, tokenizer=None: apply_lora(m, c, n)),
    "adapters": Method(BottleneckConfig, lambda m, c, n, tokenizer=None: apply_adapters(m, c, n)),
    "prompt": Method(PromptTuningConfig, _apply_prompt),
    "prefix": Method(PrefixTuningConfig, lambda m, c, n, tokenizer=None: apply_prefix_tuning(m, c, n)),
    "ia3": Method(IA3Config, lambda m, c, n, tokenizer=None: apply_ia3(m, c, n)),
}


@dataclass
class PeftOptions:
    """The `peft` option block of the fine-tuning recipe: one method and its settings (flat).

    `--peft lora` is short for `--peft.method=lora` (SHORTHAND).
    """

    SHORTHAND: ClassVar[str] = "method"

    method: str = field(default="", metadata={"help": "'' (full fine-tuning), " + ", ".join(METHODS)})
    r: int = field(default=8, metadata={"help": "lora: rank"})
    alpha: float = field(default=16.0, metadata={"help": "lora: scale numerator (alpha/r)"})
    dropout: float = field(default=0.0, metadata={"help": "lora: dropout on the LoRA path"})
    targets: str = field(default="q_proj,v_proj", metadata={"help": "lora: names, globs or all-linear"})
    rslora: bool = field(default=False, metadata={"help": "lora: scale by alpha/sqrt(r)"})
    placement: str = field(default="houlsby", metadata={"help": "adapters: houlsby or pfeiffer"})
    reduction: int = field(default=16, metadata={"help": "adapters: width reduction factor"})
    activation: str = field(default="relu", metadata={"help": "adapters: relu, gelu, tanh, silu"})
    num_tokens: int = field(default=20, metadata={"help": "prompt: virtual tokens"})
    init_text: str = field(default="", metadata={"help": "prompt: init from this text ('' : random)"})
    length: int = field(default=10, metadata={"help": "prefix: prefix length per layer"})
    reparameterize: bool = field(default=True, metadata={"help": "prefix: train through an MLP"})
    hidden: int = field(default=512, metadata={"help": "prefix: MLP width"})
    ia3_targets: str = field(default="k_proj,v_proj,down_proj", metadata={"help": "ia3: modules to rescale"})
    modules_to_save: str = field(default="", metadata={"help": "modules trained in full too, e.g. head"})

    def __post_init__(self) -> None:
        if self.method and self.method not in METHODS:
            raise ConfigError(f"peft.method must be one of {', '.join(METHODS)} (or ''), got {self.method!r}")


def options_to_config(opts: PeftOptions) -> Any:
    """The method's own config from the flat option block."""
    if opts.method not in METHODS:
        raise ConfigError(f"peft.method must be one of {', '.join(METHODS)}, got {opts.method!r}")
    cls = METHODS[opts.method].config
    values = asdict(opts)
    if opts.method == "ia3":
        values["targets"] = opts.ia3_targets
    return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


def _registry(model: nn.Module) -> dict[str, tuple[str, dict]]:
    reg = getattr(model, REGISTRY_ATTR, None)
    if reg is None:
        reg = {}
        setattr(model, REGISTRY_ATTR, reg)
    return reg


def apply_peft(model: nn.Module, method: str | PeftOptions, cfg: Any = None, name: str = "default",
               tokenizer: Any = None, modules_to_save: str | list[str] = "") -> nn.Module:
    """Attach adapter `name` of `method` (a METHODS key, or a PeftOptions block); use the returned model.

    `modules_to_save` names modules (such as a new task head, "head") that train in full beside the
    adapter and are saved with it."""
    if isinstance(method, PeftOptions):
        modules_to_save = modules_to_save or method.modules_to_save
        cfg, method = options_to_config(method), method.method
    if method not in METHODS:
        raise ConfigError(f"unknown PEFT method {method!r} (known: {', '.join(METHODS)})")
    spec = METHODS[method]
    cfg = cfg if cfg is not None else spec.config()
    if not isinstance(cfg, spec.config):
        raise ConfigError(f"PEFT method {method!r} needs a {spec.config.__name__}, got {type(cfg).__name__}")
    registry = dict(getattr(model, REGISTRY_ATTR, None) or {})
    saved = core.modules_to_save(model)
    for where in core.split_patterns(modules_to_save):
        try:
            model.get_submodule(where)
        except AttributeError:
            raise ConfigError(f"modules_to_save: the model has no module {where!r}") from None
        if where not in saved:
            saved.append(where)
    model = spec.apply(model, cfg, name, tokenizer=tokenizer)
    registry[name] = (method, asdict(cfg))
    setattr(model, REGISTRY_ATTR, registry)
    if saved:
        setattr(model, core.SAVED_MODULES_ATTR, saved)
        mark_trainable(model, name)
    return model


def save_adapter(model: nn.Module, path: str | os.PathLike, name: str | None = None, base: str = "",
                 labels: list[str] | None = None) -> Path:
    """Write adapter `name` (default: the active one) as `adapter_config.json` + `adapter.safetensors`.

    The directory carries what reusing it needs: the modules trained in full (such as a new task head)
    and how to rebuild that head, the base it was trained on (`base`, a path, recorded as given) with a
    fingerprint of the base weights (and of them with this adapter merged), and the task's `labels`."""
    reg = _registry(model)
    if name is None:
        active = {h.active for _, h in core.hosts(model)} - {None}
        if len(active) != 1:
            raise ConfigError(f"save_adapter: name the adapter to save (active: {sorted(active) or 'none'})")
        name = active.pop()
    if name not in reg:
        raise ConfigError(f"save_adapter: no adapter named {name!r} was attached with apply_peft")
    method, config = reg[name]
    saved = core.modules_to_save(model)
    config = {**config, "modules_to_save": saved}
    recorded: dict[str, Any] = {"path": str(base), "fingerprint": core.weights_fingerprint(model)}
    if method in MERGEABLE:
        recorded["merged_fingerprint"] = core.weights_fingerprint(model, merged=True)
    extra: dict[str, Any] = {"base": recorded}
    head = getattr(model, "head", None)
    if "head" in saved and head is not None and core.head_spec(head) is not None:
        extra["head"] = core.head_spec(head)
    if labels:
        extra["labels"] = list(labels)
    return core.save_adapter(model, path, method, config, name, extra)


def load_adapter(model: nn.Module, path: str | os.PathLike, name: str = "default",
                 tokenizer: Any = None, check_base: bool = True) -> nn.Module:
    """Attach the adapter saved in `path` under `name` and load its weights; use the returned model.

    The model may be the plain base the adapter was trained on (a backbone, or a checkpoint with another
    head): a task head the adapter carries is rebuilt on its backbone. With `check_base` the base weights
    must have the fingerprint the adapter recorded; weights the adapter is already merged into are refused.
    """
    meta = core.read_adapter_meta(path)
    method, config, state = core.read_adapter(path)
    where = str(Path(path) / core.ADAPTER_WEIGHTS)
    if method not in METHODS:
        raise CheckpointError(f"{Path(path) / core.ADAPTER_CONFIG}: unknown PEFT method {method!r}")
    config = dict(config)
    saved = config.pop("modules_to_save", [])
    try:
        cfg = METHODS[method].config(**config)
    except TypeError as e:
        raise CheckpointError(f"{Path(path) / core.ADAPTER_CONFIG}: bad {method} config ({e})") from None
    if method == "prompt":
        cfg.init_text = ""  # the weights come from the file
    if meta.get("head") and "head" in saved:
        model = core.with_head(model, meta["head"], str(Path(path) / core.ADAPTER_CONFIG))
    model = apply_peft(model, method, cfg, name, tokenizer=tokenizer, modules_to_save=saved)
    core.load_adapter_state_dict(model, state, name, where)
    if check_base:  # after the shapes: a model of another size is better named by them
        core.check_base(model, meta.get("base") or {}, str(path))
    return model


MERGEABLE = ("lora", "ia3")  # methods whose update folds into the base weights


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold the active LoRA / IA3 adapters into the base weights and put plain modules back, so the model
    saves as an ordinary checkpoint. Bottleneck adapters, prompts and prefixes cannot be folded into
    the base weights: they raise."""
    for where, host in list(core.hosts(model)):
        if isinstance(host, (AdapterOutput, PromptTunedBackbone)) or where.endswith("prefix") \
                or where.endswith("prefix_encoder"):
            if host.active is not None:
                raise ConfigError(f"merge: the {type(host).__name__} at {where!r} cannot be merged into "
                                  "plain weights (only lora and ia3 can)")
    for where, host in list(core.hosts(model)):
        if isinstance(host, (LoRALinear, IA3Linear)):
            host.merge()
            core.replace_module(model, where, host.base)
    if hasattr(model, REGISTRY_ATTR):
        delattr(model, REGISTRY_ATTR)
    return model
