"""The GPU benchmark suite: plmkit and transformers side by side on the same card, weights and dtype.

Cases (each alternates the candidates step by step in one process, several repeats; medians and the
spread min-max are printed, with the ratio to transformers' eager figure):

    gpt2_train    GPT-2 124M, batch 16 x 1024, bf16 autocast, forward + loss + backward + AdamW:
                  eager and torch.compile; tokens/s, MFU, peak memory of the step. plmkit's loss is the
                  pretrain recipe's (`model_lm_loss`): eager it is the fused chunked head + loss; through
                  a compiled module it falls back to logits + cross-entropy, which inductor fuses
    bert_mlm      BERT-base masked LM, batch 32 x 512 (15% masked), the same measurements
    decode_b1     batch 1, a 128-token prompt, 256 new greedy tokens, bf16 weights: eager generate, and
                  the static KV cache under torch.compile (CUDA graphs: mode reduce-overhead) for both
    decode_b16    the same with batch 16

MFU counts 6N + 12 L H Dh T FLOPs per trained token (PaLM appendix B, as nanoGPT; N: parameters without
the position embeddings, T: sequence length) against the card's dense bf16 peak (table below, or
--peak-tflops). Peak memory is torch.cuda.max_memory_allocated during one step of that candidate,
minus what was allocated before it (both libraries' weights and optimizer states stay resident).

    python bench/gpu.py                       # on a CUDA card, every case
    python bench/gpu.py --cases decode_b1 --repeats 5 --json gpu.json
    python bench/gpu.py --smoke               # the same code paths on the CPU with tiny shapes (CI)

`--smoke` shrinks every shape and, on the CPU, compiles with torch.compile's "eager" backend (dynamo
traces the same graphs; inductor's C++ build would dominate a CI run). Its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import plmkit
from plmkit.models.bert import BertConfig, bert_mlm
from plmkit.models.generation import generate
from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.objectives.clm import clm_labels
from plmkit.objectives.fused_ce import model_lm_loss
from plmkit.objectives.mlm import MaskingConfig, mask_tokens
from plmkit.training.optim import build_adamw, default_param_groups

# Dense bf16 tensor-core peaks (no sparsity), from the vendors' data sheets, by a substring of the name.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0,
                    "L4": 121.0, "A10G": 125.0, "4090": 165.0}  # fmt: skip


@dataclass(frozen=True)
class Shapes:
    gpt_layers: int = 12
    gpt_width: int = 768
    gpt_heads: int = 12
    gpt_vocab: int = 50257
    gpt_context: int = 1024
    train_batch: int = 16
    train_len: int = 1024
    bert_layers: int = 12
    bert_width: int = 768
    bert_heads: int = 12
    bert_vocab: int = 30522
    bert_batch: int = 32
    bert_len: int = 512
    prompt_len: int = 128
    new_tokens: int = 256
    big_batch: int = 16


SMOKE = Shapes(gpt_layers=2, gpt_width=32, gpt_heads=2, gpt_vocab=128, gpt_context=64, train_batch=2,
               train_len=32, bert_layers=2, bert_width=32, bert_heads=2, bert_vocab=128, bert_batch=2,
               bert_len=32, prompt_len=8, new_tokens=8, big_batch=2)  # fmt: skip


@dataclass
class Row:
    case: str
    candidate: str
    library: str
    metric: str
    median: float
    low: float
    high: float
    runs: list[float]
    mfu: float | None = None
    peak_memory_gib: float | None = None
    note: str = ""
    ratio: float | None = field(default=None)


# ------------------------------------------------------------------------------------------- plumbing


class Runtime:
    """Device, dtype, synchronization and the compile settings of one run."""

    def __init__(self, device: torch.device, smoke: bool, peak_tflops: float | None) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.dtype = torch.bfloat16
        self.backend = "inductor" if self.cuda or not smoke else "eager"
        name = torch.cuda.get_device_name(device) if self.cuda else "cpu"
        self.card = name
        if peak_tflops is None and self.cuda:
            peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        self.peak_flops = peak_tflops * 1e12 if peak_tflops else None

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def compile(self, fn: Any, **kwargs: Any) -> Any:
        return torch.compile(fn, backend=self.backend, **kwargs)

    @contextlib.contextmanager
    def default_compile_backend(self):
        """plmkit's generate(compile=True) calls torch.compile itself; give it this run's backend and, on a
        GPU, the CUDA graphs transformers' static cache gets (mode reduce-overhead), so both decode alike."""
        real = torch.compile
        mode = {"mode": "reduce-overhead"} if self.cuda else {}
        torch.compile = functools.partial(real, backend=self.backend, **mode)  # type: ignore[assignment]
        try:
            yield
        finally:
            torch.compile = real  # type: ignore[assignment]

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype)

    def measure(self, step: Callable[[], Any]) -> tuple[float, float | None]:
        """(seconds, peak GiB over what was allocated before) of one call of `step`."""
        before = 0
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
        started = time.perf_counter()
        step()
        self.sync()
        seconds = time.perf_counter() - started
        peak = (torch.cuda.max_memory_allocated(self.device) - before) / 2**30 if self.cuda else None
        return seconds, peak


def interleave(rt: Runtime, steps: dict[str, Callable[[], Any]], warmup: int, repeats: int
               ) -> dict[str, tuple[list[float], float | None]]:  # fmt: skip
    """Warm every candidate up (compilation happens here), then time them in turn, `repeats` rounds."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    rt.sync()
    times: dict[str, list[float]] = {name: [] for name in steps}
    peaks: dict[str, float | None] = {name: None for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            seconds, peak = rt.measure(step)
            times[name].append(seconds)
            if peak is not None:
                peaks[name] = max(peaks[name] or 0.0, peak)
    return {name: (times[name], peaks[name]) for name in steps}


def to_hf(ours: torch.nn.Module, cls: type, device: torch.device) -> torch.nn.Module:
    with tempfile.TemporaryDirectory() as tmp:
        plmkit.save_hf(ours, tmp)
        return cls.from_pretrained(tmp, attn_implementation="sdpa").to(device)


def rows_from(case: str, results: dict, per_step: float, metric: str, flops_per_unit: float | None,
              rt: Runtime, notes: dict[str, str] | None = None) -> list[Row]:  # fmt: skip
    rows = []
    for name, (times, peak) in results.items():
        rates = sorted(per_step / t for t in times)
        median = statistics.median(rates)
        mfu = median * flops_per_unit / rt.peak_flops if flops_per_unit and rt.peak_flops else None
        library = "transformers" if name.startswith("transformers") else "plmkit"
        rows.append(Row(case, name, library, metric, median, rates[0], rates[-1], rates, mfu, peak,
                        (notes or {}).get(name, "")))  # fmt: skip
    reference = next((r.median for r in rows if r.candidate == "transformers eager"), None)
    for row in rows:
        row.ratio = row.median / reference if reference else None
    return rows


def train_flops_per_token(params_without_positions: int, layers: int, heads: int, head_dim: int,
                          seq: int) -> float:
    """6N + 12 L H Dh T: the matmuls of forward and backward plus attention's scores and mixing."""
    return 6 * params_without_positions + 12 * layers * heads * head_dim * seq


def _without_positions(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embed_positions" not in n)


# ---------------------------------------------------------------------------------------------- cases


def _train_case(case: str, rt: Runtime, ours: torch.nn.Module, hf: torch.nn.Module, batch: dict,
                ours_loss: Callable, hf_loss: Callable, flops_per_token: float, tokens: int, warmup: int,
                repeats: int) -> list[Row]:  # fmt: skip
    ours_opt = build_adamw(default_param_groups(ours, 0.0), lr=1e-5, betas=(0.9, 0.999), eps=1e-8)
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-5, weight_decay=0.0, fused=rt.cuda)
    ours_compiled = rt.compile(ours)
    hf_compiled = rt.compile(hf)

    def step(model: Any, loss_fn: Callable, opt: torch.optim.Optimizer) -> Callable[[], None]:
        def run() -> None:
            with rt.autocast():
                loss = loss_fn(model, batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    steps = {
        "plmkit eager": step(ours, ours_loss, ours_opt),
        "transformers eager": step(hf, hf_loss, hf_opt),
        "plmkit compiled": step(ours_compiled, ours_loss, ours_opt),
        "transformers compiled": step(hf_compiled, hf_loss, hf_opt),
    }
    results = interleave(rt, steps, warmup, repeats)
    return rows_from(case, results, tokens, "tokens/s", flops_per_token, rt)


def gpt2_train(rt: Runtime, s: Shapes, warmup: int, repeats: int) -> list[Row]:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=s.gpt_vocab, max_positions=s.gpt_context, d_model=s.gpt_width,
                        num_layers=s.gpt_layers, num_heads=s.gpt_heads, dropout=0.0)  # fmt: skip
    ours = gpt2_lm(config).to(rt.device)
    hf = to_hf(ours, transformers.GPT2LMHeadModel, rt.device)
    ids = torch.randint(0, s.gpt_vocab, (s.train_batch, s.train_len), device=rt.device)
    batch = {"input_ids": ids, "labels": clm_labels(ids)}

    def ours_loss(model: Any, b: dict) -> torch.Tensor:
        loss_sum, n = model_lm_loss(model, b["labels"], b["input_ids"])  # the pretrain recipe's path
        return loss_sum / n

    def hf_loss(model: Any, b: dict) -> torch.Tensor:
        return model(input_ids=b["input_ids"], labels=b["input_ids"]).loss  # shifts inside

    flops = train_flops_per_token(_without_positions(ours), s.gpt_layers, s.gpt_heads,
                                  s.gpt_width // s.gpt_heads, s.train_len)  # fmt: skip
    return _train_case("gpt2_train", rt, ours, hf, batch, ours_loss, hf_loss, flops,
                       s.train_batch * s.train_len, warmup, repeats)  # fmt: skip


def bert_mlm_case(rt: Runtime, s: Shapes, warmup: int, repeats: int) -> list[Row]:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=s.bert_vocab, d_model=s.bert_width, num_layers=s.bert_layers,
                        num_heads=s.bert_heads, max_positions=s.bert_len, dropout=0.0, attention_dropout=0.0)
    ours = bert_mlm(config).to(rt.device)
    hf = to_hf(ours, transformers.BertForMaskedLM, rt.device)
    ids = torch.randint(5, s.bert_vocab, (s.bert_batch, s.bert_len))
    masking = MaskingConfig(mask_id=4, vocab_size=s.bert_vocab, special_ids=(0, 1, 2, 3, 4))
    masked, labels = mask_tokens(ids, masking, torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    batch = {k: v.to(rt.device) for k, v in {"input_ids": masked, "labels": labels, "mask": mask}.items()}

    def ours_loss(model: Any, b: dict) -> torch.Tensor:
        loss_sum, n = model_lm_loss(model, b["labels"], b["input_ids"], b["mask"])
        return loss_sum / n

    def hf_loss(model: Any, b: dict) -> torch.Tensor:
        return model(input_ids=b["input_ids"], attention_mask=b["mask"], labels=b["labels"]).loss

    flops = train_flops_per_token(_without_positions(ours), s.bert_layers, s.bert_heads,
                                  s.bert_width // s.bert_heads, s.bert_len)  # fmt: skip
    return _train_case("bert_mlm", rt, ours, hf, batch, ours_loss, hf_loss, flops,
                       s.bert_batch * s.bert_len, warmup, repeats)  # fmt: skip


def _decode_case(case: str, batch: int, rt: Runtime, s: Shapes, warmup: int, repeats: int) -> list[Row]:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=s.gpt_vocab, max_positions=s.gpt_context, d_model=s.gpt_width,
                        num_layers=s.gpt_layers, num_heads=s.gpt_heads, dropout=0.0)  # fmt: skip
    ours = gpt2_lm(config)
    hf = to_hf(ours, transformers.GPT2LMHeadModel, rt.device).to(rt.dtype).eval()
    ours = ours.to(rt.device, rt.dtype).eval()
    prompt = torch.randint(0, s.gpt_vocab, (batch, s.prompt_len), device=rt.device)
    mask = torch.ones_like(prompt)
    n = s.new_tokens
    hf_static = to_hf(ours.float(), transformers.GPT2LMHeadModel, rt.device).to(rt.dtype).eval()
    ours = ours.to(rt.dtype)
    mode = "reduce-overhead" if rt.cuda else None  # CUDA graphs replay the fixed-shape decode step
    hf_static.forward = rt.compile(hf_static.forward, mode=mode, fullgraph=True)
    outputs: dict[str, torch.Tensor] = {}

    def hf_generate(model: Any, **extra: Any) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                out = model.generate(prompt, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                     do_sample=False, pad_token_id=0, **extra)  # fmt: skip
            outputs[run.name] = out[:, prompt.shape[1]:]

        return run

    def ours_generate(compiled: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad(), rt.default_compile_backend():
                outputs[run.name] = generate(ours, prompt, mask, max_new_tokens=n, do_sample=False,
                                             compile=compiled)  # fmt: skip

        return run

    steps = {
        "plmkit eager": ours_generate(False),
        "transformers eager": hf_generate(hf),
        "plmkit static+compiled": ours_generate(True),
        "transformers static+compiled": hf_generate(hf_static, cache_implementation="static"),
    }
    for name, fn in steps.items():
        fn.name = name  # type: ignore[attr-defined]
    results = interleave(rt, steps, warmup, repeats)
    reference = outputs["transformers eager"]
    notes = {}
    for name, out in outputs.items():
        same = out.shape == reference.shape and bool((out == reference).all())
        agree = float((out == reference).float().mean()) if out.shape == reference.shape else 0.0
        notes[name] = "tokens identical to transformers eager" if same else f"{agree:.0%} of tokens agree"
    return rows_from(case, results, batch * n, "new tokens/s", None, rt, notes)


def decode_b1(rt: Runtime, s: Shapes, warmup: int, repeats: int) -> list[Row]:
    return _decode_case("decode_b1", 1, rt, s, warmup, repeats)


def decode_b16(rt: Runtime, s: Shapes, warmup: int, repeats: int) -> list[Row]:
    return _decode_case("decode_b16", s.big_batch, rt, s, warmup, repeats)


CASES: dict[str, Callable[[Runtime, Shapes, int, int], list[Row]]] = {
    "gpt2_train": gpt2_train,
    "bert_mlm": bert_mlm_case,
    "decode_b1": decode_b1,
    "decode_b16": decode_b16,
}


def format_rows(rows: list[Row]) -> str:
    header = (f"{'case':<11} {'candidate':<29} {'median':>12} {'min-max':>23} {'vs HF eager':>11} "
              f"{'MFU':>6} {'peak GiB':>8}  unit / note")
    lines = [header, "-" * len(header)]
    for r in rows:
        spread = f"{r.low:,.1f}-{r.high:,.1f}"
        ratio = f"{r.ratio:.2f}x" if r.ratio else "-"
        mfu = f"{r.mfu:.1%}" if r.mfu is not None else "n/a"
        peak = f"{r.peak_memory_gib:.2f}" if r.peak_memory_gib is not None else "n/a"
        lines.append(f"{r.case:<11} {r.candidate:<29} {r.median:>12,.1f} {spread:>23} {ratio:>11} {mfu:>6} "
                     f"{peak:>8}  {r.metric}{'; ' + r.note if r.note else ''}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: the code paths only")
    parser.add_argument("--device", default="", help="default: cuda (cpu with --smoke)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per candidate")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per candidate (compiles)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device is visible; --smoke checks the code paths on the CPU", file=sys.stderr)
        return 2
    shapes = SMOKE if args.smoke else Shapes()
    if args.smoke:
        args.repeats, args.warmup = 1, 1
    torch.manual_seed(0)
    rt = Runtime(device, args.smoke, args.peak_tflops)
    if rt.cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    print(f"card: {rt.card}; torch {torch.__version__}, transformers {transformers.__version__}; "
          f"bf16; peak {rt.peak_flops / 1e12 if rt.peak_flops else 'unknown'} TFLOPS; compile backend "
          f"{rt.backend}{'; SMOKE: tiny shapes, figures meaningless' if args.smoke else ''}", flush=True)
    rows: list[Row] = []
    for name in args.cases:
        case_rows = CASES[name](rt, shapes, args.warmup, args.repeats)
        rows += case_rows
        print(format_rows(case_rows), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"card": rt.card, "torch": torch.__version__, "smoke": args.smoke,
                                         "rows": [asdict(r) for r in rows]}, indent=1) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
