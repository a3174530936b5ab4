"""Which int8 weight-only product to decode with on this CPU: batch-1 products of the bench GPT-2's shapes.

For each (in, out) shape of the 6 x 384 GPT-2 (q/k/v/o 384->384, up 384->1536, down 1536->384, LM head
384->50257), the fastest of `repeats` runs (process CPU time, so other processes' turns do not count) of:
fp32 `F.linear`; bf16 `F.linear`; torch's `aten._weight_int8pack_mm` with fp32 activations and with bf16
activations; and dequantize-then-multiply (int8 -> fp32 each call). plmkit's `Int8Linear` uses the kernel
with bf16 activations (see `plmkit.models.quantize`).

    python bench/int8_kernels.py [--threads 1] [--repeats 30]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

SHAPES = [(384, 384), (384, 1536), (1536, 384), (384, 50257)]


def fastest_us(fn, repeats: int) -> float:  # noqa: ANN001
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best * 1e6


def candidates(k: int, n: int, g: torch.Generator) -> list:
    """The five products of a batch-1 input (1, k) with an (n, k) weight, as zero-argument callables."""
    w = torch.randn(n, k, generator=g)
    x = torch.randn(1, k, generator=g)
    scale = w.abs().amax(1) / 127
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    xb, wb, sb = x.bfloat16(), w.bfloat16(), scale.bfloat16()
    return [
        lambda: F.linear(x, w),
        lambda: F.linear(xb, wb),
        lambda: torch.ops.aten._weight_int8pack_mm(x, q, scale),
        lambda: torch.ops.aten._weight_int8pack_mm(xb, q, sb),
        lambda: F.linear(x, q.float()) * scale,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}, threads {args.threads}; "
          "microseconds per batch-1 product (fastest run)")
    names = ("fp32", "bf16", "int8 fp32-act", "int8 bf16-act", "dequant")
    print(f"{'in -> out':>14} " + " ".join(f"{name:>14}" for name in names))
    g = torch.Generator().manual_seed(0)
    for k, n in SHAPES:
        row = [fastest_us(fn, args.repeats) for fn in candidates(k, n, g)]
        print(f"{f'{k} -> {n}':>14} " + " ".join(f"{us:14.0f}" for us in row))


if __name__ == "__main__":
    main()
