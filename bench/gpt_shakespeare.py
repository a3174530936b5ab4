"""Quality: character-level Tiny Shakespeare with nanoGPT's small CPU setting, through `plmkit pretrain`.

nanoGPT (karpathy/nanoGPT README, "shakespeare_char" on a CPU): 4 layers, 4 heads, 128 wide, context 64,
batch 12, 2000 iterations, lr 1e-3 (warmup 100, cosine to 1e-4), beta2 0.99, no dropout -> val loss 1.88.
The text is split 90/10 into train/val as nanoGPT's prepare.py does (split files go to a temp dir).
Training windows are drawn at random offsets of the train split, as nanoGPT's `get_batch` does
(`--data.sampling=random_windows`). Prints the validation curve (mean over the whole validation split),
the final figure against 1.88, the spread of nanoGPT's own 20-batch estimator on the trained model, the
wall time and a sample.

    python bench/gpt_shakespeare.py [--steps 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import plmkit
from plmkit.config import parse
from plmkit.data.batches import RandomWindows
from plmkit.objectives.clm import causal_lm_loss
from plmkit.recipes import pretrain

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "tiny_shakespeare" / "input.txt"
NANOGPT_VAL_LOSS = 1.88


EVAL_ITERS = 20  # nanoGPT's --eval_iters for this CPU setting


class Ids:
    """An in-memory token stream for RandomWindows."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = torch.tensor(ids)
        self.num_tokens = len(ids)

    def read(self, start: int, length: int) -> torch.Tensor:
        return self.ids[start : start + length]


def nanogpt_estimates(model: torch.nn.Module, val_ids: list[int], draws: int = 50) -> list[float]:
    """Val loss as nanoGPT's `estimate_loss` measures it (EVAL_ITERS random 12 x 64 windows), `draws`
    times with different windows: how far its single reported figure can stray from the full-split mean."""
    windows = RandomWindows(Ids(val_ids), seq_len=64, batch_size=12, seed=0)
    model.eval()
    estimates = []
    with torch.no_grad():
        for _ in range(draws):
            losses = []
            for _ in range(EVAL_ITERS):
                batch = windows.next_batch()
                loss_sum, count = causal_lm_loss(model(batch["input_ids"]), batch["labels"])
                losses.append(float(loss_sum) / int(count))
            estimates.append(statistics.mean(losses))
    return estimates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; a model this small mostly waits on thread barriers with more")
    parser.add_argument("--decay-embeddings", action="store_true",
                        help="weight decay on the (tied) embedding matrix too, as nanoGPT does")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    text = DATA.read_text(encoding="utf-8")
    n = int(0.9 * len(text))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "train.txt").write_text(text[:n], encoding="utf-8")
        (tmp / "val.txt").write_text(text[n:], encoding="utf-8")
        cfg = parse(pretrain.Config, [
            "--config", str(REPO / "configs" / "gpt-shakespeare-char.yaml"),
            f"--data.train_files={tmp / 'train.txt'}", f"--data.val_files={tmp / 'val.txt'}",
            "--data.eval_batches=1000", "--data.sampling=random_windows", f"--train.max_steps={args.steps}",
            f"--train.eval_every={args.eval_every}", f"--train.out_dir={tmp / 'run'}",
            "--train.checkpoint_every=0", "--no-train.progress", "--train.log_every=50",
            f"--train.decay_embeddings={args.decay_embeddings}",
        ])
        start = time.perf_counter()
        summary = pretrain.run(cfg)
        seconds = time.perf_counter() - start
        rows = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
        train_loss = {row["step"]: row["loss"] for row in rows if "loss" in row}
        print("step  train_loss  val_loss")
        for row in rows:
            if "val_loss" in row:
                loss = train_loss.get(row["step"], float("nan"))
                print(f"{row['step']:>5}  {loss:10.4f}  {row['val_loss']:8.4f}")
        loaded = plmkit.load(summary["hf_export"])
        tok = loaded.require_tokenizer()
        estimates = nanogpt_estimates(loaded.model, tok.encode(text[n:], add_special_tokens=False))
        # The context is 64 characters: crop the running text to it each step, as nanoGPT's sampler does.
        ids = tok.encode("\n", add_special_tokens=False)
        gen = torch.Generator().manual_seed(1337)
        for _ in range(300):
            window = ids[-(loaded.model.config.max_positions - 1):]
            ids += plmkit.generate(loaded.model, [window], max_new_tokens=1, do_sample=True, temperature=0.8,
                                   top_k=200, generator=gen)[0].tolist()
        new = torch.tensor([ids[1:]])
        print("sample:\n" + tok.decode(new[0].tolist()))
    val = summary["val_loss"]
    print(f"nanoGPT's estimator (mean of {EVAL_ITERS} random val batches of 12 x 64), {len(estimates)} "
          "draws: "
          f"median {statistics.median(estimates):.4f}, std {statistics.stdev(estimates):.4f}, "
          f"range {min(estimates):.4f}-{max(estimates):.4f}")
    print(f"val loss: plmkit {val:.4f}, nanoGPT {NANOGPT_VAL_LOSS}, ratio {val / NANOGPT_VAL_LOSS:.3f} "
          f"({'meets' if val <= NANOGPT_VAL_LOSS else 'misses'} <= {NANOGPT_VAL_LOSS}); "
          f"{args.steps} steps in {seconds:.0f} s")


if __name__ == "__main__":
    main()
