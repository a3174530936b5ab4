"""CPU speed and memory of the GPT-2 family against transformers, side by side in one process.

Training: a 6-layer, 384-wide GPT-2 (vocab 50257, fp32) on batches of 16 x 256 tokens, forward + causal-LM
loss + backward + AdamW step; tokens/s. plmkit trains through its fused head + loss
(`plmkit.objectives.fused_ce`, "fused") and, for comparison, through the full logits ("logits"); both
libraries get torch's fused AdamW (plmkit's `build_adamw`; transformers' Trainer defaults to
`adamw_torch_fused` on torch >= 2.8). The ceiling is the step's matrix products alone, timed on random
operands of the step's shapes.

Generation: batch 1, a 16-token prompt, 128 new greedy tokens with the KV cache; plmkit fp32 and int8
weight-only (`plmkit.quantize`) against transformers' fp32 `generate` on the same weights. The floor of a
decoded token is reading every weight matrix once: weight bytes over the memory bandwidth, measured in the
same process by a STREAM-like copy of that many bytes (counted as bytes read + written).

Every row's figures come from one run that alternates the candidates, so machine noise hits all alike;
medians and the runs are printed.

Memory (`--memory`): each library's step in its own process; peak RSS during two steps (the optimizer
state included) minus the RSS after building the model.

    python bench/gpt_speed.py [--repeats 3] [--threads 2] [--train-steps 1] [--skip-train]
                              [--skip-generate] [--memory]
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import subprocess
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
from plmkit.objectives.fused_ce import model_lm_loss
from plmkit.training.optim import build_adamw, default_param_groups

LAYERS, WIDTH, HEADS, VOCAB, CONTEXT = 6, 384, 6, 50257, 1024
TRAIN_PATHS = ("fused", "logits")
# The clock every timing reads: wall time, or with --clock=cpu the process's CPU time, which on a loaded
# machine with one thread counts only the time the step itself ran (other processes' turns left out).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def build_ours() -> torch.nn.Module:
    torch.manual_seed(0)
    return gpt2_lm(GPT2Config(vocab_size=VOCAB, max_positions=CONTEXT, d_model=WIDTH, num_layers=LAYERS,
                              num_heads=HEADS, dropout=0.0))


def to_hf(ours: torch.nn.Module) -> torch.nn.Module:
    with tempfile.TemporaryDirectory() as tmp:
        plmkit.save_hf(ours, tmp)
        return transformers.GPT2LMHeadModel.from_pretrained(tmp, attn_implementation="sdpa")


def build() -> tuple[torch.nn.Module, torch.nn.Module]:
    ours = build_ours()
    return ours, to_hf(ours)


def make_optimizer(model: torch.nn.Module, is_hf: bool) -> torch.optim.Optimizer:
    """Each library's default: plmkit's training loop's AdamW, transformers' Trainer's adamw_torch_fused."""
    if is_hf:
        return torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
    return build_adamw(default_param_groups(model, 0.0), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)


def plmkit_loss(model: torch.nn.Module, ids: torch.Tensor, path: str) -> torch.Tensor:
    """Mean next-token loss through the fused head + loss ("fused") or the full logits ("logits")."""
    labels = clm_labels(ids)
    if path == "fused":
        loss_sum, n = model_lm_loss(model, labels, ids)
    else:
        loss_sum, n = causal_lm_loss(model(ids), labels)
    return loss_sum / n


def train_step_fn(model: torch.nn.Module, is_hf: bool, path: str, ids: torch.Tensor):  # noqa: ANN201
    model.train()
    opt = make_optimizer(model, is_hf)

    def step() -> None:
        loss = model(ids, labels=ids).loss if is_hf else plmkit_loss(model, ids, path)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def train_tokens_per_s(
    model: torch.nn.Module, is_hf: bool, path: str, ids: torch.Tensor, steps: int
) -> float:
    step = train_step_fn(model, is_hf, path, ids)
    step()  # warm-up: allocator, kernels, optimizer state
    start = clock()
    for _ in range(steps):
        step()
    return ids.numel() * steps / (clock() - start)


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
        products += [(m, k, o), (m, o, k), (o, m, k)]
    operands = {p: (torch.randn(p[0], p[1]), torch.randn(p[1], p[2])) for p in set(products)}
    times = []
    for _ in range(repeats):
        start = clock()
        for p in products:
            a, b = operands[p]
            torch.mm(a, b)
        times.append(clock() - start)
    return statistics.median(times)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a decoded token reads from weight matrices: every linear layer's weight (int8 ones with their
    scales); embeddings are read one row per token and left out."""
    from plmkit.models.quantize import Int8Linear

    total = 0
    for m in model.modules():
        if isinstance(m, Int8Linear):
            total += m.weight_int8.numel() + m.weight_scale.numel() * 4
        elif isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D":
            total += m.weight.numel() * m.weight.element_size()
    return total


def copy_bandwidth(nbytes: int, repeats: int = 5) -> float:
    """Bytes/s of a STREAM-like copy of an `nbytes` array (read + written), median of `repeats`."""
    src = torch.rand(max(1, nbytes // 4))
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        start = clock()
        dst.copy_(src)
        times.append(clock() - start)
    return 2 * src.numel() * 4 / statistics.median(times)


def generate_tokens_per_s(model: torch.nn.Module, is_hf: bool, prompt: torch.Tensor, n: int) -> float:
    model.eval()
    if is_hf:
        run = lambda: model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                     pad_token_id=0)
    else:
        run = lambda: plmkit.generate(model, prompt, max_new_tokens=n)
    with torch.inference_mode():
        run()
        start = clock()
        run()
    return n / (clock() - start)


def measure_generate(repeats: int = 3) -> dict[str, list[float]]:
    """tokens/s of plmkit fp32, plmkit int8, transformers fp32 and the fp32/int8 weight-reading floors,
    interleaved."""
    ours, hf = build()
    quant = plmkit.quantize(copy.deepcopy(ours), "int8")
    prompt = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a = plmkit.generate(ours, prompt, max_new_tokens=16)[0]
        b = hf.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)[0, 16:]
        c = plmkit.generate(quant, prompt, max_new_tokens=16)[0]
    assert a.tolist() == b.tolist(), "greedy outputs differ"
    agree = sum(x == y for x, y in zip(a.tolist(), c.tolist()))
    print(f"greedy tokens, int8 vs fp32: {agree}/16 equal (random weights: near-ties are common)")
    fp32_bytes, int8_bytes = weight_bytes(ours), weight_bytes(quant)
    out: dict[str, list[float]] = {k: [] for k in ("fp32", "int8", "hf", "floor_fp32", "floor_int8", "bw")}
    for _ in range(repeats):
        out["fp32"].append(generate_tokens_per_s(ours, False, prompt, 128))
        out["int8"].append(generate_tokens_per_s(quant, False, prompt, 128))
        out["hf"].append(generate_tokens_per_s(hf, True, prompt, 128))
        bw = copy_bandwidth(fp32_bytes)
        out["bw"].append(bw / 1e9)
        out["floor_fp32"].append(bw / fp32_bytes)
        out["floor_int8"].append(copy_bandwidth(int8_bytes) / int8_bytes)
    print(f"weights read per token: fp32 {fp32_bytes / 1e6:.1f} MB, int8 {int8_bytes / 1e6:.1f} MB")
    return out


def measure_train(repeats: int = 3, steps: int = 2) -> dict[str, list[float]]:
    """tokens/s of plmkit (fused and logits paths), transformers and the matrix-product ceiling,
    interleaved."""
    ours, hf = build()
    ids = torch.randint(0, VOCAB, (16, 256), generator=torch.Generator().manual_seed(1))
    out: dict[str, list[float]] = {k: [] for k in (*TRAIN_PATHS, "hf", "ceiling")}
    for _ in range(repeats):
        for path in TRAIN_PATHS:
            out[path].append(train_tokens_per_s(ours, False, path, ids, steps))
            gc.collect()
        out["hf"].append(train_tokens_per_s(hf, True, "", ids, steps))
        gc.collect()
        out["ceiling"].append(ids.numel() / gemm_floor_s(1))
    return out


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def memory_child(which: str) -> None:
    """Print the MB a training step needs beyond the built model (peak RSS - RSS after building)."""
    ours = build_ours()
    model: torch.nn.Module = ours
    if which == "hf":
        model = to_hf(ours)
        del ours
    gc.collect()
    ids = torch.randint(0, VOCAB, (16, 256), generator=torch.Generator().manual_seed(1))
    step = train_step_fn(model, which == "hf", which, ids)
    base = _rss_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    step()
    step()
    print(f"{(_rss_kb('VmHWM') - base) / 1024:.0f}")


def measure_memory() -> dict[str, float]:
    """Extra peak MB of a training step for plmkit fused, plmkit logits and transformers, one process each."""
    out = {}
    for which in (*TRAIN_PATHS, "hf"):
        cmd = [sys.executable, __file__, "--memory-child", which, "--threads", str(torch.get_num_threads())]
        out[which] = float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])
    return out


def generate_case() -> list[BenchResult]:
    """bench/run.py case: batch-1 greedy generation, 128 new tokens, fp32 and int8 vs transformers fp32."""
    r = measure_generate()
    hf = statistics.median(r["hf"])
    return [
        BenchResult("gpt_generate", "generate b=1 128 new", statistics.median(r["fp32"]), hf, "tokens/s",
                    note="GPT-2 6x384, fp32, CPU"),
        BenchResult("gpt_generate_int8", "generate b=1 128 new, int8", statistics.median(r["int8"]), hf,
                    "tokens/s", note="int8 weight-only vs transformers fp32"),
    ]


def train_case() -> list[BenchResult]:
    """bench/run.py case: training throughput at 16 x 256 tokens."""
    r = measure_train()
    return [BenchResult("gpt_train", "train 16x256", statistics.median(r["fused"]),
                        statistics.median(r["hf"]), "tokens/s",
                        note="GPT-2 6x384, fp32, CPU, fused AdamW, fused head + loss")]


def _runs(values: list[float]) -> str:
    return str([round(x, 1) for x in values])


def row(name: str, ours: list[float], ref: list[float], ceiling: list[float], unit: str) -> None:
    a, b, c = statistics.median(ours), statistics.median(ref), statistics.median(ceiling)
    ratios = [x / y for x, y in zip(ours, ref)]
    print(f"{name}: plmkit {a:.1f}, transformers {b:.1f}, ceiling {c:.1f} {unit}; plmkit/transformers "
          f"{a / b:.2f}x (per-pair median {statistics.median(ratios):.2f}x), "
          f"ceiling/transformers {c / b:.2f}x "
          f"(runs: plmkit {_runs(ours)}, transformers {_runs(ref)}, ceiling {_runs(ceiling)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads for both libraries (0: torch's default)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or the process CPU time (with --threads 1 on a loaded machine)")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-generate", action="store_true")
    parser.add_argument("--memory", action="store_true", help="also measure each step's extra peak memory")
    parser.add_argument("--memory-child", choices=(*TRAIN_PATHS, "hf"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child)
        return
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"threads {torch.get_num_threads()}, clock {args.clock}")
    if not args.skip_generate:
        r = measure_generate(args.repeats)
        row("generate b=1, 128 new, fp32", r["fp32"], r["hf"], r["floor_fp32"], "tokens/s")
        row("generate b=1, 128 new, int8 weight-only (vs transformers fp32)", r["int8"], r["hf"],
            r["floor_int8"], "tokens/s")
        print(f"  floors: weight bytes / copy bandwidth ({statistics.median(r['bw']):.1f} GB/s at the fp32 "
              f"weights' size, runs {_runs(r['bw'])})")
    if not args.skip_train:
        r = measure_train(args.repeats, args.train_steps)
        row("train 16x256, fused head + loss", r["fused"], r["hf"], r["ceiling"], "tokens/s")
        row("train 16x256, full logits", r["logits"], r["hf"], r["ceiling"], "tokens/s")
        print("  ceiling: the step's matrix products alone")
    if args.memory:
        m = measure_memory()
        print(f"train step extra peak memory (own process each): plmkit fused {m['fused']:.0f} MB, "
              f"plmkit logits {m['logits']:.0f} MB, transformers {m['hf']:.0f} MB; "
              f"fused/transformers {m['fused'] / m['hf']:.2f}x")


if __name__ == "__main__":
    main()
