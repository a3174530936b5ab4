"""The one training loop: every "batch -> loss" recipe (pretraining, fine-tuning, PEFT, distillation, SFT,
DPO) calls `train()` with a `step_fn` and a `Batches` source.

Per optimizer step the loop draws `grad_accum` micro-batches, backpropagates each micro-batch's summed
loss, and divides the accumulated gradients by the total number of targets of the whole window (summed
over ranks), so k micro-batches with any padding give the gradient of one batch of k times the size.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import random
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as recompute

from plmkit.data.batches import Batches
from plmkit.errors import ConfigError, TrainingError
from plmkit.io import write_text
from plmkit.progress import progress_bar
from plmkit.training import distributed, runtime
from plmkit.training.checkpoint import (
    capture_rng,
    find_latest,
    load_checkpoint,
    save_checkpoint,
    step_dirs,
)
from plmkit.training.optim import SCHEDULES, build_adamw, build_scheduler, default_param_groups

logger = logging.getLogger("plmkit.training")

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
NAN_POLICIES = ("stop", "skip")


@dataclass
class TrainConfig:
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps to run"})
    lr: float = field(default=3e-4, metadata={"help": "peak learning rate"})
    min_lr_ratio: float = field(
        default=0.1, metadata={"help": "final lr as a fraction of the peak (cosine/linear)"}
    )
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW decay on matrices (never norms/biases/embeddings)"}
    )
    decay_embeddings: bool = field(
        default=False, metadata={"help": "also decay embedding matrices (nanoGPT does; tied heads included)"}
    )
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "AdamW beta1, beta2"})
    eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warmup steps before the decay"})
    schedule: str = field(
        default="cosine", metadata={"help": "lr decay after warmup: cosine, linear, constant or wsd"}
    )
    decay_fraction: float = field(
        default=0.2, metadata={"help": "wsd: share of the steps after warmup spent decaying (at the end)"}
    )
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    clip_norm: float = field(default=1.0, metadata={"help": "clip the global gradient norm to this (0: off)"})
    precision: str = field(
        default="fp32", metadata={"help": "fp32, bf16 (autocast) or fp16 (autocast + grad scaler)"}
    )
    compile: bool = field(default=False, metadata={"help": "run the model through torch.compile"})
    activation_checkpointing: bool = field(
        default=False, metadata={"help": "recompute each block of every `layers` list in backward"}
    )
    fsdp: bool = field(default=False, metadata={"help": "shard with FSDP2 fully_shard instead of DDP"})
    eval_every: int = field(default=0, metadata={"help": "call eval_fn every N steps (0: only at the end)"})
    log_every: int = field(default=1, metadata={"help": "write a metrics row every N steps"})
    checkpoint_every: int = field(
        default=0, metadata={"help": "checkpoint every N steps (0: only at the end)"}
    )
    keep_last: int = field(default=3, metadata={"help": "keep the newest N checkpoints (0: keep all)"})
    out_dir: str = field(
        default="", metadata={"help": "directory for metrics.jsonl and checkpoints ('': none)"}
    )
    resume: bool = field(
        default=False, metadata={"help": "continue from the newest complete checkpoint in out_dir"}
    )
    nan_policy: str = field(
        default="stop", metadata={"help": "on a NaN/inf loss: stop (error) or skip the step"}
    )
    seed: int = field(default=0, metadata={"help": "seed of Python/NumPy/torch RNGs (dropout) at the start"})
    tensorboard: bool = field(
        default=False, metadata={"help": "also log to TensorBoard in out_dir (if installed)"}
    )
    progress: bool = field(
        default=True,
        metadata={"help": "progress: a bar on a terminal, else a plain line every 1/20 of the run or 30 s"},
    )

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # YAML gives a list
        checks = [
            ("max_steps", self.max_steps >= 1, "must be >= 1"),
            ("lr", self.lr > 0, "must be > 0"),
            ("min_lr_ratio", 0.0 <= self.min_lr_ratio <= 1.0, "must be in [0, 1]"),
            ("weight_decay", self.weight_decay >= 0, "must be >= 0"),
            (
                "betas",
                len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
                "must be two values in [0, 1)",
            ),
            ("eps", self.eps > 0, "must be > 0"),
            ("warmup_steps", self.warmup_steps >= 0, "must be >= 0"),
            ("schedule", self.schedule in SCHEDULES, f"must be one of {', '.join(SCHEDULES)}"),
            ("decay_fraction", 0.0 < self.decay_fraction <= 1.0, "must be in (0, 1]"),
            ("grad_accum", self.grad_accum >= 1, "must be >= 1"),
            ("clip_norm", self.clip_norm >= 0, "must be >= 0"),
            ("precision", self.precision in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}"),
            ("eval_every", self.eval_every >= 0, "must be >= 0"),
            ("log_every", self.log_every >= 1, "must be >= 1"),
            ("checkpoint_every", self.checkpoint_every >= 0, "must be >= 0"),
            ("keep_last", self.keep_last >= 0, "must be >= 0"),
            ("nan_policy", self.nan_policy in NAN_POLICIES, f"must be one of {', '.join(NAN_POLICIES)}"),
            ("resume", not (self.resume and not self.out_dir), "needs out_dir to find checkpoints in"),
        ]
        for key, ok, rule in checks:
            if not ok:
                raise ConfigError(f"TrainConfig.{key}={getattr(self, key)!r}: {rule}")


def step_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator for a step function's own randomness (masks, span corruption), seeded from the
    global torch RNG. `train` seeds that RNG and every checkpoint saves and restores it, so a resumed run
    draws exactly the masks an uninterrupted run would have drawn (a counter kept inside the step function
    would restart at zero)."""
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator(device=device).manual_seed(seed)


@dataclass
class StepOutput:
    """What `step_fn(model, batch)` returns for one micro-batch.

    `loss_sum` is summed (not averaged) over the `num_targets` targets of the micro-batch; sequence-level
    losses use the batch size. `metrics` are extra floats to log (averaged over the window's micro-batches).
    """

    loss_sum: Tensor
    num_targets: int | Tensor
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    history: list[dict[str, Any]]  # one row per optimizer step: step, loss, lr, tokens_per_s, grad_norm, ...
    final_eval: dict[str, float]
    skipped_steps: int
    step: int
    checkpoint: Path | None  # the last checkpoint written by this run


@dataclass
class WindowResult:
    loss: float  # mean loss per target over the window, all ranks
    num_targets: float
    tokens: float
    metrics: dict[str, float]


StepFn = Callable[[nn.Module, dict[str, Tensor]], StepOutput]


def count_tokens(batch: dict[str, Tensor]) -> int:
    """Real tokens in a batch: the attention mask's nonzero entries (a packed mask numbers its documents
    1, 2, ...), else the size of input_ids."""
    if "attention_mask" in batch:
        return int((batch["attention_mask"] != 0).sum())
    if "input_ids" in batch:
        return batch["input_ids"].numel()
    return 0


def _sync_context(module: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce on all but the window's last micro-batch."""
    if isinstance(module, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if last else module.no_sync()
    if hasattr(module, "set_requires_gradient_sync"):  # FSDP2
        module.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


def _autocast(device_type: str, precision: str) -> contextlib.AbstractContextManager:
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def accumulate_gradients(
    model: nn.Module,
    step_fn: StepFn,
    micro_batches: Sequence[dict[str, Tensor]],
    params: Sequence[nn.Parameter],
    *,
    sync_module: nn.Module | None = None,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
) -> WindowResult:
    """Backpropagate every micro-batch's `loss_sum`, then scale gradients to the mean over the window.

    The divisor is the window's total `num_targets` summed over ranks. DDP and FSDP average gradients over
    ranks, so the factor is `world_size / total_targets`; for one process it is `1 / total_targets`.
    """
    device = params[0].device
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss_sum, num_targets, tokens
    metric_sums: dict[str, float] = {}
    for i, batch in enumerate(micro_batches):
        batch = {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}
        with _sync_context(sync_module or model, last=i == len(micro_batches) - 1):
            with _autocast(device.type, precision):
                out = step_fn(model, batch)
            loss_sum = out.loss_sum.float()
            (scaler.scale(loss_sum) if scaler is not None else loss_sum).backward()
        totals[0] += loss_sum.detach()
        totals[1] += float(out.num_targets)
        totals[2] += count_tokens(batch)
        for key, value in out.metrics.items():
            metric_sums[key] = metric_sums.get(key, 0.0) + float(value)
    distributed.all_reduce_sum(totals)
    loss_sum, num_targets, tokens = totals.tolist()
    if num_targets > 0:
        factor = distributed.dist_info().world_size / num_targets
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, factor)
    loss = loss_sum / num_targets if num_targets > 0 else math.nan
    metrics = {k: v / len(micro_batches) for k, v in metric_sums.items()}
    return WindowResult(loss, num_targets, tokens, metrics)


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute every block of each `layers` list in backward instead of keeping its activations.

    The block's own `forward` is replaced on the instance, so parameter names (and checkpoints) are unchanged.
    """
    for layers in distributed.layer_lists(model):
        for block in layers:
            if getattr(block, "_plmkit_recompute", False):
                continue
            inner = block.forward

            def forward(*args: Any, _inner: Callable = inner, **kwargs: Any) -> Any:
                return recompute(_inner, *args, use_reentrant=False, **kwargs)

            block.forward = functools.update_wrapper(forward, inner)
            block._plmkit_recompute = True


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _MetricsLog:
    """Rank 0's metrics.jsonl (and TensorBoard). On resume, rows past the checkpoint are dropped: the run
    that wrote them was killed and the resumed run writes them again."""

    def __init__(self, out_dir: Path, start_step: int, tensorboard: bool) -> None:
        self.path = out_dir / "metrics.jsonl"
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                if isinstance(row, dict) and row.get("step", math.inf) <= start_step:
                    kept.append(line)
            write_text(self.path, "".join(line + "\n" for line in kept))
        self.handle = open(self.path, "a")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.warning("tensorboard is not installed; logging to %s only", self.path)
            else:
                self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, row: dict[str, Any]) -> None:
        self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()
        if self.writer is not None:
            prefix = row.get("split", "train")
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(f"{prefix}/{key}", value, row["step"])

    def close(self) -> None:
        self.handle.close()
        if self.writer is not None:
            self.writer.close()


def _evaluate(
    model: nn.Module, eval_fn: Callable[[nn.Module], dict[str, float]], precision: str
) -> dict[str, float]:
    device_type = next(model.parameters()).device.type
    model.eval()
    try:
        with torch.no_grad(), _autocast(device_type, precision):
            return {k: float(v) for k, v in eval_fn(model).items()}
    finally:
        model.train()


def _update(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    params: list[nn.Parameter],
    clip_norm: float,
) -> float:
    """Unscale (fp16), clip, step; return the gradient norm before clipping."""
    scaler.unscale_(optimizer)
    max_norm = clip_norm if clip_norm > 0 else math.inf  # inf: measure the norm, change nothing
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns a DTensor
        grad_norm = grad_norm.full_tensor()
    scaler.step(optimizer)  # skips the step itself if fp16 gradients overflowed
    scaler.update()
    return float(grad_norm)


def _advance(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    with warnings.catch_warnings():  # a step skipped by the scaler or nan_policy still advances the lr
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        scheduler.step()


def _batch_line(batches: Batches, cfg: TrainConfig, world_size: int, device: torch.device) -> str:
    """The run's global batch, spelled out: what each rank reads and how it adds up."""
    micro = getattr(batches, "batch_size", None)
    total = f" = {micro * cfg.grad_accum * world_size}" if isinstance(micro, int) else ""
    mode = "FSDP2" if cfg.fsdp else "DDP" if world_size > 1 else "one process"
    return (
        f"global batch = micro-batch {micro if micro is not None else '?'} x accumulation {cfg.grad_accum}"
        f" x ranks {world_size}{total}; {mode} on {device}, precision {cfg.precision}"
    )


def train(
    model: nn.Module,
    step_fn: StepFn,
    batches: Batches,
    cfg: TrainConfig,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    param_groups: list[dict[str, Any]] | None = None,
    tokenizer: Any = None,
) -> TrainResult:
    """Train `model` for `cfg.max_steps` optimizer steps and return the per-step history.

    `step_fn(model, batch) -> StepOutput` computes one micro-batch's summed loss; it must call `model(...)`
    (the loop may hand it a DDP or compiled wrapper). `param_groups` overrides the default AdamW groups.
    Under torchrun call `distributed.init_distributed()` first and move the model to its device; only
    rank 0 writes files. `tokenizer` (anything with `save(dir)`) is saved in every checkpoint.
    """
    info = distributed.dist_info()
    out_dir = Path(cfg.out_dir) if cfg.out_dir else None
    if (
        out_dir is not None
        and not cfg.resume
        and (step_dirs(out_dir) or (out_dir / "metrics.jsonl").exists())
    ):
        raise ConfigError(
            f"{out_dir}: already holds a run; set resume=True to continue it or choose another out_dir"
        )
    distributed.barrier()  # every rank has looked at out_dir before rank 0 writes into it
    _seed_everything(cfg.seed + info.rank)
    model.train()
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    wrapped = distributed.wrap_model(model, cfg.fsdp)  # FSDP2 shards in place: the optimizer comes after
    groups = param_groups if param_groups is not None else default_param_groups(
        model, cfg.weight_decay, cfg.decay_embeddings
    )
    optimizer = build_adamw(groups, cfg.lr, cfg.betas, cfg.eps)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not params:
        raise ConfigError("train: the model has no parameters with requires_grad=True")
    scheduler = build_scheduler(
        optimizer,
        schedule=cfg.schedule,
        warmup_steps=cfg.warmup_steps,
        max_steps=cfg.max_steps,
        min_lr_ratio=cfg.min_lr_ratio,
        decay_fraction=cfg.decay_fraction,
    )
    device_type = params[0].device.type
    runtime.check_precision(cfg.precision, params[0].device)
    scaler = torch.amp.GradScaler(device_type, enabled=cfg.precision == "fp16")

    step = 0
    if cfg.resume and out_dir is not None:
        latest = find_latest(out_dir)
        if latest is not None:
            step = load_checkpoint(latest, model, optimizer, scheduler, scaler, batches)["step"]
            if info.is_main:
                logger.info("resumed from %s at step %d", latest, step)
    step_model = torch.compile(wrapped) if cfg.compile else wrapped
    log = _MetricsLog(out_dir, step, cfg.tensorboard) if out_dir is not None and info.is_main else None
    if info.is_main and cfg.progress:
        print(_batch_line(batches, cfg, info.world_size, params[0].device), file=sys.stderr, flush=True)
    bar = progress_bar(cfg.max_steps, "train", initial=step, disable=not (cfg.progress and info.is_main),
                       unit="step")

    history: list[dict[str, Any]] = []
    final_eval: dict[str, float] = {}
    skipped = 0
    last_checkpoint: Path | None = None
    configs = {"train": dict(vars(cfg))}
    try:
        while step < cfg.max_steps:
            started = time.perf_counter()
            micro_batches = [batches.next_batch() for _ in range(cfg.grad_accum)]
            window = accumulate_gradients(
                step_model, step_fn, micro_batches, params,
                sync_module=wrapped, precision=cfg.precision, scaler=scaler,
            )  # fmt: skip
            lr = scheduler.get_last_lr()[0]
            row: dict[str, Any] = {"step": step + 1, "split": "train", "loss": window.loss, "lr": lr}
            if math.isfinite(window.loss):
                row["grad_norm"] = _update(optimizer, scaler, params, cfg.clip_norm)
            elif cfg.nan_policy == "stop":
                raise TrainingError(
                    f"loss is {window.loss} at step {step + 1} (window targets: {window.num_targets:.0f}); "
                    "lower the lr, check the data, or set nan_policy=skip"
                )
            else:
                skipped += 1
                row["skipped"] = True
                if info.is_main:
                    logger.warning(
                        "step %d: loss is %s; update skipped (%d so far)", step + 1, window.loss, skipped
                    )
            optimizer.zero_grad(set_to_none=True)
            _advance(scheduler)
            step += 1
            elapsed = time.perf_counter() - started
            row["tokens_per_s"] = window.tokens / elapsed if elapsed > 0 else 0.0
            row.update(window.metrics)
            history.append(row)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                bar.set_postfix(loss=f"{window.loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_s']:.0f}")
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                if log is not None:
                    log.write(row)
            if eval_fn is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                scores = _evaluate(model, eval_fn, cfg.precision)
                if log is not None:
                    log.write({"step": step, "split": "eval", **scores})
            if out_dir is not None and (
                step == cfg.max_steps or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
            ):
                rng = distributed.all_gather_object(capture_rng())
                last_checkpoint = save_checkpoint(
                    out_dir, model, optimizer, scheduler, scaler, batches, step,
                    rng=rng, configs=configs, keep_last=cfg.keep_last, tokenizer=tokenizer,
                )  # fmt: skip
        if eval_fn is not None:
            final_eval = _evaluate(model, eval_fn, cfg.precision)
            if log is not None:
                log.write({"step": step, "split": "eval", **final_eval})
    finally:
        bar.close()
        if log is not None:
            log.close()
    return TrainResult(history, final_eval, skipped, step, last_checkpoint)
