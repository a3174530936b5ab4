"""A tiny causal LM and a training run on random token data, shared by the training tests.

Also a script: `python tiny_run.py OUT_DIR [options]` (or under `torchrun`) trains it with
`plmkit.training.train`; the resume and DDP tests run it as a subprocess and read OUT_DIR/metrics.jsonl.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plmkit.data.batches import ShuffledBatches
from plmkit.errors import DataError
from plmkit.training import StepOutput, TrainConfig, TrainResult, checkpoint, distributed, train

VOCAB = 32


class Block(nn.Module):
    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.v_proj = nn.Linear(dim, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.up_proj = nn.Linear(dim, 2 * dim)
        self.down_proj = nn.Linear(2 * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        # causal mixing by a running mean: position t sees only positions <= t, so right padding never
        # changes the outputs at real positions
        v = self.v_proj(self.attn_norm(h))  # (B, T, D)
        steps = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype)[None, :, None]
        h = h + self.dropout(v.cumsum(dim=1) / steps)
        return h + self.dropout(self.down_proj(F.gelu(self.up_proj(self.mlp_norm(h)))))


class TinyLM(nn.Module):
    def __init__(self, dim: int = 16, n_layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, dim)
        self.layers = nn.ModuleList(Block(dim, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, VOCAB, bias=False)
        self.lm_head.weight = self.embed_tokens.weight  # tied, as in GPT-2
        nn.init.normal_(self.embed_tokens.weight, std=0.1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h)
        return self.lm_head(self.norm(h))  # (B, T, V)


def make_examples(n: int = 64, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 13, (n,), generator=generator).tolist()
    return [torch.randint(1, VOCAB, (length,), generator=generator).tolist() for length in lengths]


def collate(examples: list[list[int]]) -> dict[str, Tensor]:
    """Right-pad to the longest example; labels are the next token, -100 on padding and the last token."""
    width = max(len(e) for e in examples)
    input_ids = torch.zeros(len(examples), width, dtype=torch.long)
    attention_mask = torch.zeros(len(examples), width, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, tokens in enumerate(examples):
        input_ids[row, : len(tokens)] = torch.tensor(tokens)
        attention_mask[row, : len(tokens)] = 1
        labels[row, : len(tokens) - 1] = torch.tensor(tokens[1:])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def step_fn(model: nn.Module, batch: dict[str, Tensor]) -> StepOutput:
    logits = model(batch["input_ids"], batch["attention_mask"])
    labels = batch["labels"]
    loss_sum = F.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="sum"
    )
    return StepOutput(loss_sum=loss_sum, num_targets=(labels != -100).sum(), metrics={})


def run(
    out_dir: str,
    steps: int = 6,
    batch_size: int = 8,
    grad_accum: int = 1,
    dropout: float = 0.1,
    checkpoint_every: int = 1,
    resume: bool = False,
    keep_last: int = 0,
    loss_fn: object = step_fn,
    fsdp: bool = False,
) -> TrainResult:
    """Train TinyLM; `batch_size` is the per-rank micro-batch."""
    info = distributed.dist_info()
    torch.manual_seed(0)
    model = TinyLM(dropout=dropout)
    batches = ShuffledBatches(
        make_examples(), collate, batch_size, seed=1, rank=info.rank, world_size=info.world_size
    )
    cfg = TrainConfig(
        max_steps=steps,
        lr=1e-2,
        warmup_steps=2,
        grad_accum=grad_accum,
        checkpoint_every=checkpoint_every,
        keep_last=keep_last,
        out_dir=out_dir,
        resume=resume,
        fsdp=fsdp,
        progress=False,
    )
    return train(model, loss_fn, batches, cfg)


def _slow_down_writes(step: int, seconds: float) -> None:
    """Sleep after each file of checkpoint `step`, so a test can kill the process mid-write."""
    finish = checkpoint.fsync_file

    def slow_finish(path: Path) -> None:
        finish(path)
        if path.parent.name == f".tmp-step-{step}":
            time.sleep(seconds)

    checkpoint.fsync_file = slow_finish


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--checkpoint-every", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--fsdp", action="store_true")
    parser.add_argument("--slow-write-step", type=int, default=0)
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--fail-rank", type=int, default=-1, help="this rank raises at --fail-step")
    parser.add_argument("--fail-step", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    distributed.init_distributed()
    if args.slow_write_step:
        _slow_down_writes(args.slow_write_step, 30.0)

    calls = 0

    def delayed(model: nn.Module, batch: dict[str, Tensor]) -> StepOutput:
        nonlocal calls
        calls += 1
        if distributed.dist_info().rank == args.fail_rank and calls == args.fail_step * args.grad_accum:
            raise DataError(f"bad batch on rank {args.fail_rank} at step {args.fail_step}")
        time.sleep(args.step_delay)  # slow enough for a test to kill the run between checkpoints
        return step_fn(model, batch)

    run(
        args.out_dir,
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        dropout=args.dropout,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        loss_fn=delayed if args.step_delay or args.fail_rank >= 0 else step_fn,
        fsdp=args.fsdp,
    )
    distributed.cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
