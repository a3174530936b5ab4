"""Where a GPT-2 training step spends its time: torch.profiler's top operators, plmkit and transformers.

The bench model of bench/gpt_speed.py (6 x 384, vocab 50257, fp32) on one 16 x 256 batch, same weights in
both libraries: forward + loss + backward + AdamW step, after one warm-up step. `--path` picks plmkit's
step: "fused" (the training path: fused head + loss, `plmkit.objectives.fused_ce`, and fused AdamW) or
"before" (the model's logits, then `causal_lm_loss`, and foreach AdamW: plmkit's step before issue 23).
transformers gets its Trainer's default optimizer, torch's fused AdamW.

    python bench/gpt_profile.py [--threads 2] [--rows 12] [--path fused|before] [--skip-hf]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpt_speed import VOCAB, build, make_optimizer, plmkit_loss


def profile(model: torch.nn.Module, is_hf: bool, path: str, ids: torch.Tensor, rows: int) -> None:
    model.train()
    if path == "before" and not is_hf:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
    else:
        opt = make_optimizer(model, is_hf)

    def step() -> None:
        if is_hf:
            loss = model(ids, labels=ids).loss
        else:
            loss = plmkit_loss(model, ids, "logits" if path == "before" else path)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    wall = time.perf_counter() - start
    name = "transformers" if is_hf else f"plmkit ({path})"
    print(f"== {name}: one step {wall:.2f} s (profiled), {ids.numel() / wall:.0f} tokens/s")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--path", choices=("fused", "before"), default="fused")
    parser.add_argument("--skip-hf", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ours, hf = build()
    ids = torch.randint(0, VOCAB, (16, 256), generator=torch.Generator().manual_seed(1))
    profile(ours, False, args.path, ids, args.rows)
    if args.path == "fused":
        profile(ours, False, "before", ids, args.rows)
    if not args.skip_hf:
        profile(hf, True, args.path, ids, args.rows)


if __name__ == "__main__":
    main()
