"""In-context evaluation speed against lm-evaluation-harness 0.4, interleaved in one process.

Both score the same checkpoint on the same task and the same examples: a GPT-2 (4 layers, 256 wide,
4 heads, the GPT-2 BPE vocabulary of 50257 tokens, 1024 positions, random weights, fp32, CPU) written
with `plmkit.save_hf` and loaded by plmkit and by lm-eval's HFLM (`pretrained=DIR`). Tasks: the shipped
`sst2_4shot` (SST-2 dev, 4 shots drawn per example from train, label words) and `hhh` (the 438
Constitutional-AI comparisons, " (A)" vs " (B)"); lm-eval reads the same files through the YAML that
`plmkit.evaluation.spec.lm_eval_config` writes. The same batch size for both; lm-eval keeps its
defaults (one-token continuations share one forward through its logits cache).

plmkit's time covers `run_task` whole (reading the files, building the prompts, scoring); lm-eval's covers
`evaluator.evaluate` on tasks loaded once (its datasets are read outside the clock). Each repeat runs
plmkit then lm-eval; medians and every run are printed. The first repeat also checks that both give the
same per-example log-likelihoods (within 1e-3) and the same accuracy.

    python bench/eval_speed.py [--examples 128] [--repeats 3] [--threads 1] [--batch-size 16]
                               [--data ../shared/data] [--tasks sst2_4shot,hhh]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import plmkit
from plmkit.data.tokenizer import Tokenizer
from plmkit.evaluation import load_task, run_task
from plmkit.evaluation.spec import lm_eval_config
from plmkit.models.gpt import GPT2Config, gpt2_lm

LAYERS, WIDTH, HEADS, CONTEXT = 4, 256, 4, 1024


def build_checkpoint(data: Path, out: Path) -> Path:
    tokenizer = Tokenizer.load(data / "tokenizers" / "gpt2")
    torch.manual_seed(0)
    model = gpt2_lm(GPT2Config(vocab_size=tokenizer.vocab_size, max_positions=CONTEXT, d_model=WIDTH,
                               num_layers=LAYERS, num_heads=HEADS, dropout=0.0))
    return plmkit.save_hf(model.eval(), out, tokenizer=tokenizer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    default_data = os.environ.get("PLMKIT_DATA") or str(Path("..") / "shared" / "data")
    parser.add_argument("--data", default=default_data)
    parser.add_argument("--tasks", default="sst2_4shot,hhh")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    data = Path(args.data)

    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoint(data, Path(tmp) / "model")
        pre = plmkit.load(ckpt)
        model, tokenizer = pre.model.eval(), pre.require_tokenizer()
        ref_lm = HFLM(pretrained=str(ckpt), device="cpu", batch_size=args.batch_size, dtype="float32")
        print(f"model: GPT-2 {LAYERS}x{WIDTH}, vocab {tokenizer.vocab_size}, context {CONTEXT}, fp32, "
              f"{args.threads} threads, batch {args.batch_size}, {args.examples} examples per task")
        for name in args.tasks.split(","):
            spec = load_task(name)
            yaml_dir = Path(tmp) / f"tasks_{name}"
            yaml_dir.mkdir()
            (yaml_dir / f"{name}.yaml").write_text(yaml.safe_dump(lm_eval_config(spec, data)))
            loaded = TaskManager(include_path=str(yaml_dir)).load([name])
            ours_s, ref_s = [], []
            for r in range(args.repeats):
                start = time.perf_counter()
                ours = run_task(model, tokenizer, spec, data, batch_size=args.batch_size, log_samples=r == 0,
                                limit=args.examples, progress=False)
                ours_s.append(time.perf_counter() - start)
                for task in loaded["tasks"].values():
                    task.set_fewshot_seed(seed=spec.fewshot_seed)
                start = time.perf_counter()
                ref = evaluator.evaluate(lm=ref_lm, task_dict=loaded, limit=args.examples,
                                         bootstrap_iters=0, log_samples=r == 0, verbosity="ERROR")
                ref_s.append(time.perf_counter() - start)
                if r == 0:
                    check(name, ours, ref)
            ours_rate = args.examples / statistics.median(ours_s)
            ref_rate = args.examples / statistics.median(ref_s)
            print(f"{name}: plmkit {ours_rate:.2f} examples/s, lm-eval {ref_rate:.2f} examples/s, "
                  f"ratio {ours_rate / ref_rate:.2f}x")
            runs = f"plmkit {[round(s, 2) for s in ours_s]}  lm-eval {[round(s, 2) for s in ref_s]}"
            print(f"  runs (s): {runs}")


def check(name: str, ours: dict, ref: dict) -> None:
    theirs = sorted(ref["samples"][name], key=lambda s: s["doc_id"])
    worst = 0.0
    for a, b in zip(ours["samples"], theirs, strict=True):
        expected = [resp[0][0] for resp in b["resps"]]
        worst = max(worst, max(abs(x - y) for x, y in zip(a["logprobs"], expected, strict=True)))
    acc = ref["results"][name]["acc,none"]
    same = "same" if ours["acc"] == acc else "DIFFERENT"
    print(f"  {name}: max |log-likelihood difference| {worst:.2e}; acc plmkit {ours['acc']:.4f}, "
          f"lm-eval {acc:.4f} ({same})")
    if worst > 1e-3 or ours["acc"] != acc:
        raise SystemExit(f"{name}: plmkit and lm-eval disagree")


if __name__ == "__main__":
    main()
