"""Training-loop throughput: `plmkit.training.train` against transformers' `Trainer`, side by side.

The same randomly initialised 4-layer, 256-wide GPT-2 (vocab 8192, fp32, CPU) trains for the same
number of optimizer steps on the same random token windows (micro-batch 8 x 128, 2 micro-batches per
step, AdamW, warmup + cosine, clipping at 1.0). Each run starts from a fresh copy of the weights and is
timed end to end (optimizer construction, data, steps), so the figure includes each loop's own overhead.
Runs alternate between the two loops so machine noise hits both alike; medians are reported.

    python bench/training_loop.py [--steps 8] [--repeats 3]
    python bench/run.py training_loop
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch

from plmkit.data.batches import ShuffledBatches
from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.objectives.clm import causal_lm_loss, clm_labels
from plmkit.training import StepOutput, TrainConfig, train

try:
    from bench.result import BenchResult
except ImportError:  # run as a script from bench/
    from result import BenchResult

LAYERS, WIDTH, HEADS, VOCAB, CONTEXT = 4, 256, 4, 8192, 128
MICRO_BATCH, GRAD_ACCUM = 8, 2


def _windows(n: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return list(torch.randint(0, VOCAB, (n, CONTEXT), generator=generator))


def _plmkit_seconds(model: torch.nn.Module, windows: list[torch.Tensor], steps: int) -> float:
    def step_fn(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
        loss_sum, n = causal_lm_loss(m(batch["input_ids"]), clm_labels(batch["input_ids"]))
        return StepOutput(loss_sum=loss_sum, num_targets=n)

    cfg = TrainConfig(
        max_steps=steps, lr=3e-4, warmup_steps=2, grad_accum=GRAD_ACCUM, clip_norm=1.0, progress=False
    )
    batches = ShuffledBatches(windows, lambda xs: {"input_ids": torch.stack(xs)}, MICRO_BATCH, seed=0)
    start = time.perf_counter()
    train(model, step_fn, batches, cfg)
    return time.perf_counter() - start


def _trainer_seconds(model: torch.nn.Module, windows: list[torch.Tensor], steps: int) -> float:
    import transformers

    class Wrapped(torch.nn.Module):  # Trainer wants a model that returns the loss
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            loss_sum, n = causal_lm_loss(self.inner(input_ids), clm_labels(labels))
            return {"loss": loss_sum / n}

    data = [{"input_ids": w, "labels": w} for w in windows]
    with tempfile.TemporaryDirectory() as tmp:
        args = transformers.TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=MICRO_BATCH, gradient_accumulation_steps=GRAD_ACCUM,
            max_steps=steps, learning_rate=3e-4, warmup_steps=2, lr_scheduler_type="cosine",
            max_grad_norm=1.0, weight_decay=0.01, save_strategy="no", report_to=[], use_cpu=True,
            disable_tqdm=True, logging_strategy="no", dataloader_num_workers=0, seed=0,
        )  # fmt: skip
        trainer = transformers.Trainer(model=Wrapped(model), args=args, train_dataset=data)
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start


def loop_throughput(steps: int = 8, repeats: int = 3) -> list[BenchResult]:
    torch.manual_seed(0)
    base = gpt2_lm(GPT2Config(vocab_size=VOCAB, max_positions=CONTEXT, d_model=WIDTH, num_layers=LAYERS,
                              num_heads=HEADS, dropout=0.0))  # fmt: skip
    windows = _windows(MICRO_BATCH * GRAD_ACCUM * steps)
    tokens = MICRO_BATCH * GRAD_ACCUM * CONTEXT * steps
    _plmkit_seconds(copy.deepcopy(base), windows, 2)  # warm-up: allocator, kernels, imports
    _trainer_seconds(copy.deepcopy(base), windows, 2)
    ours, ref = [], []
    for _ in range(repeats):
        ours.append(tokens / _plmkit_seconds(copy.deepcopy(base), windows, steps))
        ref.append(tokens / _trainer_seconds(copy.deepcopy(base), windows, steps))
    note = (f"GPT-2 {LAYERS}x{WIDTH}, {steps} steps of {GRAD_ACCUM}x{MICRO_BATCH}x{CONTEXT} tokens, "
            f"CPU fp32; runs alternated, {repeats} each; min-max plmkit {min(ours):,.0f}-{max(ours):,.0f}, "
            f"transformers {min(ref):,.0f}-{max(ref):,.0f}")
    return [
        BenchResult(
            "training_loop", "train() vs Trainer.train()", statistics.median(ours), statistics.median(ref),
            "tokens/s", note=note,
        )
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    (result,) = loop_throughput(args.steps, args.repeats)
    print(
        f"training loop: plmkit {result.plmkit:,.0f} tokens/s, transformers Trainer {result.reference:,.0f} "
        f"tokens/s, ratio {result.ratio:.2f}x ({result.note})"
    )


if __name__ == "__main__":
    main()
