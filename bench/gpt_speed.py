"""CPU speed of the GPT-2 family against transformers, side by side in one process.

Training: a 6-layer, 384-wide GPT-2 (vocab 50257, fp32) on batches of 16 x 256 tokens, forward +
causal-LM loss + backward + AdamW step; tokens/s. Generation: batch 1, a 16-token prompt, 128 new
greedy tokens with the KV cache; tokens/s against transformers' `generate` on the same weights.
Runs alternate between the two libraries so machine noise hits both alike; the median is reported.

    python bench/gpt_speed.py [--repeats 3] [--threads 1] [--skip-train] [--skip-generate]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import plmkit
from bench.result import BenchResult
from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.objectives.clm import causal_lm_loss, clm_labels

LAYERS, WIDTH, HEADS, VOCAB, CONTEXT = 6, 384, 6, 50257, 1024


def build() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    ours = gpt2_lm(GPT2Config(vocab_size=VOCAB, max_positions=CONTEXT, d_model=WIDTH, num_layers=LAYERS,
                              num_heads=HEADS, dropout=0.0))
    with tempfile.TemporaryDirectory() as tmp:
        plmkit.save_hf(ours, tmp)
        hf = transformers.GPT2LMHeadModel.from_pretrained(tmp, attn_implementation="sdpa")
    return ours, hf


def train_tokens_per_s(model: torch.nn.Module, is_hf: bool, ids: torch.Tensor, steps: int) -> float:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        if is_hf:
            loss = model(ids, labels=ids).loss
        else:
            loss_sum, n = causal_lm_loss(model(ids), clm_labels(ids))
            loss = loss_sum / n
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: allocator, kernels
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return ids.numel() * steps / (time.perf_counter() - start)


def generate_tokens_per_s(model: torch.nn.Module, is_hf: bool, prompt: torch.Tensor, n: int) -> float:
    model.eval()
    if is_hf:
        run = lambda: model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                     pad_token_id=0)
    else:
        run = lambda: plmkit.generate(model, prompt, max_new_tokens=n)
    with torch.inference_mode():
        run()
        start = time.perf_counter()
        run()
    return n / (time.perf_counter() - start)


def matvec_floor_s(model: torch.nn.Module, repeats: int = 5) -> float:
    """Seconds per decoded token that no fp32 implementation can beat: one batch-1 product with every
    weight matrix of the model (blocks and the 50257-row output matrix), nothing else. At batch 1 each
    of these reads its whole matrix once, so this is the weight-reading cost of a token."""
    mats = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x = {w.shape[1]: torch.randn(1, w.shape[1]) for w in mats}
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            for w in mats:
                torch.nn.functional.linear(x[w.shape[1]], w)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_floor_s(repeats: int = 3) -> float:
    """Seconds per training step that no fp32 implementation can beat: the step's matrix products alone
    of every linear layer and the output matrix (forward X Wᵀ, backward dY W and dYᵀ X), timed on random
    operands of the step's shapes. Attention products are left out (a causal kernel may skip half), so
    this is a lower bound."""
    n, d, v = 16 * 256, WIDTH, VOCAB
    shapes = [(d, d)] * 4 + [(4 * d, d), (d, 4 * d)]  # (out, in) of q, k, v, o, up, down
    gemms = [(n, i, o) for o, i in shapes] * LAYERS + [(n, d, v)]
    products = []
    for m, k, o in gemms:  # forward (m,k)(k,o); backward (m,o)(o,k) and (o,m)(m,k)
        products += [(1, m, k, o), (1, m, o, k), (1, o, m, k)]
    operands = {p: (torch.randn(p[0], p[1], p[2]), torch.randn(p[0], p[2], p[3])) for p in set(products)}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for p in products:
            a, b = operands[p]
            torch.bmm(a, b) if p[0] > 1 else torch.mm(a[0], b[0])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_generate(repeats: int = 3) -> tuple[list[float], list[float], list[float]]:
    """tokens/s of plmkit, transformers, and the weight-reading ceiling (1 / matvec_floor_s), interleaved."""
    ours, hf = build()
    prompt = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a = plmkit.generate(ours, prompt, max_new_tokens=16)[0]
        b = hf.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)[0, 16:]
    assert a.tolist() == b.tolist(), "greedy outputs differ"
    g_ours, g_ref, ceiling = [], [], []
    for _ in range(repeats):
        g_ours.append(generate_tokens_per_s(ours, False, prompt, 128))
        g_ref.append(generate_tokens_per_s(hf, True, prompt, 128))
        ceiling.append(1.0 / matvec_floor_s(ours))
    return g_ours, g_ref, ceiling


def measure_train(repeats: int = 3, steps: int = 2) -> tuple[list[float], list[float], list[float]]:
    """tokens/s of plmkit, transformers, and the matrix-product ceiling (gemm_floor_s), interleaved."""
    ours, hf = build()
    ids = torch.randint(0, VOCAB, (16, 256), generator=torch.Generator().manual_seed(1))
    t_ours, t_ref, ceiling = [], [], []
    for _ in range(repeats):
        t_ours.append(train_tokens_per_s(ours, False, ids, steps))
        t_ref.append(train_tokens_per_s(hf, True, ids, steps))
        ceiling.append(ids.numel() / gemm_floor_s(1))
    return t_ours, t_ref, ceiling


def generate_case() -> list[BenchResult]:
    """bench/run.py case: batch-1 greedy generation, 128 new tokens."""
    a, b, _ = measure_generate()
    return [BenchResult("gpt_generate", "generate b=1 128 new", statistics.median(a), statistics.median(b),
                        "tokens/s", note="GPT-2 6x384, fp32, CPU")]


def train_case() -> list[BenchResult]:
    """bench/run.py case: training throughput at 16 x 256 tokens."""
    a, b, _ = measure_train()
    return [BenchResult("gpt_train", "train 16x256", statistics.median(a), statistics.median(b),
                        "tokens/s", note="GPT-2 6x384, fp32, CPU, AdamW")]


def report(name: str, ours: list[float], ref: list[float], ceiling: list[float], unit: str) -> None:
    a, b, c = statistics.median(ours), statistics.median(ref), statistics.median(ceiling)
    ratios = [x / y for x, y in zip(ours, ref)]
    print(f"{name}: plmkit {a:.1f} {unit}, transformers {b:.1f} {unit}, ratio {a / b:.2f}x "
          f"(median of per-pair ratios {statistics.median(ratios):.2f}x; "
          f"runs: plmkit {[round(x, 1) for x in ours]}, transformers {[round(x, 1) for x in ref]})")
    print(f"  ceiling (matrix products alone) {c:.1f} {unit}: no fp32 implementation gets past "
          f"{c / b:.2f}x transformers here (runs {[round(x, 1) for x in ceiling]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both libraries (0: torch's default); on a shared machine "
                             "more than one mostly measures threads waiting for each other")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-generate", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {threads}")
    if not args.skip_generate:
        report("generate batch 1, 128 new tokens", *measure_generate(args.repeats), unit="tokens/s")
    if not args.skip_train:
        report("train 16x256", *measure_train(args.repeats, args.train_steps), unit="tokens/s")


if __name__ == "__main__":
    main()
