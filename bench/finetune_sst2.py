"""SST-2: fine-tune MiniLM-L6 with plmkit and with transformers side by side; dev accuracy and time per step.

Training data: a seeded random subset of ../shared/data/sst2/train.tsv (`--train-examples`, drawn with
random.Random(0)); evaluation: the whole dev.tsv (872 sentences). Same initial weights, batches, optimizer
(AdamW, lr, no weight decay, linear decay to 0, clip 1.0), steps and seed on both sides; dropout off.

    python bench/finetune_sst2.py [--train-examples 2000] [--steps 60] [--batch-size 16] [--lr 1e-4]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.finetune_common import report, side_by_side  # noqa: E402
from plmkit.data.readers import read_glue_tsv  # noqa: E402
from plmkit.recipes.finetune import Config, DataConfig, _default_train  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-examples", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=64)
    args = parser.parse_args()
    train = read_glue_tsv(DATA / "train.tsv", labels=["0", "1"])
    random.Random(0).shuffle(train)
    train = train[: args.train_examples]
    dev = read_glue_tsv(DATA / "dev.tsv", labels=["0", "1"])
    cfg = Config(
        task="classification",
        data=DataConfig(batch_size=args.batch_size, max_length=args.max_length, eval_batch_size=64),
        train=_default_train(),
    )
    cfg.train.lr = args.lr
    result = side_by_side("classification", train, dev, cfg, args.steps, labels=["0", "1"])
    title = (
        f"SST-2 dev ({len(dev)}), MiniLM-L6, {args.steps} steps x {args.batch_size} from {len(train)} train "
        f"sentences, lr {args.lr}, max_length {args.max_length}"
    )
    print(report(title, result, ["accuracy", "f1"]))


if __name__ == "__main__":
    main()
