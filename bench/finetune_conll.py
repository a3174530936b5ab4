"""CoNLL-2003 NER: fine-tune MiniLM-L6 with plmkit and with transformers side by side; entity F1 on eng.testa.

Training data: a seeded random subset of ../shared/data/conll2003/eng.train (`--train-sentences`, drawn with
random.Random(0)); evaluation: the first `--eval-sentences` sentences of eng.testa (0: all 3,250).
Entity-level F1 (seqeval's default mode) over words, each word predicted from its first sub-word.
Same initial weights, batches, optimizer, steps and seed on both sides; dropout off.

    python bench/finetune_conll.py [--train-sentences 2000] [--steps 60] [--eval-sentences 0]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.finetune_common import report, side_by_side  # noqa: E402
from plmkit.data.readers import read_conll  # noqa: E402
from plmkit.recipes.finetune import Config, DataConfig, _default_train, tagging_labels  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-sentences", type=int, default=2000)
    parser.add_argument("--eval-sentences", type=int, default=0)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    full = read_conll(DATA / "eng.train")
    labels = tagging_labels(full)
    random.Random(0).shuffle(full)
    train = full[: args.train_sentences]
    dev = read_conll(DATA / "eng.testa", labels=labels)
    dev = dev[: args.eval_sentences] if args.eval_sentences else dev
    cfg = Config(
        task="ner",
        data=DataConfig(batch_size=args.batch_size, max_length=args.max_length, eval_batch_size=64),
        train=_default_train(),
    )
    cfg.train.lr = args.lr
    result = side_by_side("ner", train, dev, cfg, args.steps, labels=labels)
    title = (
        f"CoNLL-2003 eng.testa ({len(dev)} sentences), MiniLM-L6, {args.steps} steps x {args.batch_size} "
        f"from {len(train)} train sentences, lr {args.lr}"
    )
    print(report(title, result, ["f1", "precision", "recall"]))


if __name__ == "__main__":
    main()
