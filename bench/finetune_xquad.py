"""XQuAD-en extractive QA: fine-tune MiniLM-L6 with plmkit and with transformers side by side; EM and F1.

XQuAD-en (../shared/data/xquad_en, 48 articles, 1,190 questions) is split by article in file order: the
first 36 articles train, the last 12 evaluate, so no paragraph is in both. Windows of `--max-length`
tokens with `--stride` shared tokens; answers at most 30 tokens; official SQuAD EM/F1.
Same initial weights, batches, optimizer, steps and seed on both sides; dropout off.

    python bench/finetune_xquad.py [--steps 60] [--batch-size 16] [--max-length 256] [--stride 64]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.finetune_common import report, side_by_side  # noqa: E402
from plmkit.data.readers import read_squad  # noqa: E402
from plmkit.recipes.finetune import Config, DataConfig, _default_train  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "xquad_en" / "xquad.en.json"
TRAIN_ARTICLES = 36


def split_by_article(examples: list) -> tuple[list, list]:
    titles = list(dict.fromkeys(e.title for e in examples))  # file order
    train_titles = set(titles[:TRAIN_ARTICLES])
    return [e for e in examples if e.title in train_titles], [
        e for e in examples if e.title not in train_titles
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--stride", type=int, default=64)
    args = parser.parse_args()
    train, dev = split_by_article(read_squad(DATA))
    cfg = Config(
        task="qa",
        data=DataConfig(
            batch_size=args.batch_size, max_length=args.max_length, stride=args.stride, eval_batch_size=32
        ),
        train=_default_train(),
    )
    cfg.train.lr = args.lr
    result = side_by_side("qa", train, dev, cfg, args.steps, labels=[])
    title = (
        f"XQuAD-en by article: train {len(train)} questions (36 articles), eval {len(dev)} (12 articles), "
        f"MiniLM-L6, {args.steps} steps x {args.batch_size}, lr {args.lr}, "
        f"windows {args.max_length}/{args.stride}"
    )
    print(report(title, result, ["exact_match", "f1"], scale=1.0))  # SQuAD scores are percentages


if __name__ == "__main__":
    main()
