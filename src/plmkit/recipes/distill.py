"""Distil a fine-tuned classifier into a shallower student (DistilBERT's recipe, Sanh et al. 2019).

The student is the teacher with every other layer (layers 0, 2, 4, ... by default, as DistilBERT
initializes from BERT), keeping the teacher's embeddings and task head. It trains on the task data with
`objectives.distillation`: alpha * T^2 * KL(teacher || student at temperature T) + beta * cross-entropy on
the gold labels + gamma * (1 - cosine) between the students' and teacher's last hidden states (defaults
T=2, weights 5/2/1). The report gives teacher and student scores, their ratio and the parameter ratio;
with `--out_dir` the student is saved as a Hugging Face checkpoint and the report as JSON and a table.

    plmkit distill --teacher=runs/sst2/model --data.train_file=sst2/train.tsv \\
        --data.eval_file=sst2/dev.tsv --out_dir=runs/sst2-distilled
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plmkit.errors import ConfigError
from plmkit.io import write_json, write_text
from plmkit.models.heads import TaskModel
from plmkit.objectives.distillation import (
    DistillationWeights,
)
from plmkit.recipes.finetune import TASKS, _default_train, format_table  # the student trains as finetune does
from plmkit.training import TrainConfig, distributed, train
from plmkit.training.distillation import (  # noqa: F401 - public names of this recipe since it began
    UNLABELLED,
    Distiller,
    count_parameters,
    every_other_layer,
    make_step,
    student_from_teacher,
)
from plmkit.training.runtime import DEVICE_HELP


@dataclass
class DataConfig:
    """The classification data options of finetune's DataConfig; its QA and mixture options do not apply."""

    train_file: str = field(default="", metadata={"help": "training file (TSV/JSONL/CSV)"})
    eval_file: str = field(default="", metadata={"help": "evaluation file in the same format"})
    text_column: str = field(default="", metadata={"help": "text column ('': sentence for TSV, else text)"})
    pair_column: str = field(default="", metadata={"help": "second-segment column for pair tasks ('': none)"})
    label_column: str = field(default="label", metadata={"help": "label column of TSV/JSONL/CSV files"})
    labels: list[str] = field(
        default_factory=list, metadata={"help": "label set in id order ('': the teacher's, else the data's)"}
    )
    max_train_examples: int = field(default=0, metadata={"help": "use the first N training records (0: all)"})
    max_eval_examples: int = field(default=0, metadata={"help": "use the first N eval records (0: all)"})
    max_length: int = field(default=128, metadata={"help": "tokens per sequence"})
    batch_size: int = field(default=32, metadata={"help": "training examples per micro-batch"})
    eval_batch_size: int = field(default=64, metadata={"help": "examples per evaluation batch"})


@dataclass
class Config:
    teacher: str = field(default="", metadata={"help": "fine-tuned teacher directory (HF or plmkit)"})
    task: str = field(default="classification", metadata={"help": "task of the teacher: classification"})
    student_layers: list[int] = field(
        default_factory=list, metadata={"help": "teacher layers the student keeps ('': every other, from 0)"}
    )
    temperature: float = field(default=2.0, metadata={"help": "softmax temperature T of the soft targets"})
    alpha_kl: float = field(default=5.0, metadata={"help": "weight of T^2 * KL(teacher || student)"})
    beta_task: float = field(default=2.0, metadata={"help": "weight of the gold-label cross-entropy"})
    gamma_cos: float = field(default=1.0, metadata={"help": "weight of the hidden-state cosine loss"})
    out_dir: str = field(
        default="", metadata={"help": "where model/ and distill_report.json go ('': nowhere)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the data order"})
    device: str = field(default="auto", metadata={"help": "where to train: " + DEVICE_HELP})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "task data"})
    train: TrainConfig = field(default_factory=_default_train, metadata={"help": "training loop"})


def run(cfg: Config) -> dict:
    from plmkit.data.batches import ShuffledBatches
    from plmkit.data.tasks import collate
    from plmkit.interop.hf import load, save_hf

    if cfg.task != "classification":
        raise ConfigError(f"task {cfg.task!r}: distill supports classification only")
    if not cfg.teacher:
        raise ConfigError("--teacher is required")
    d = cfg.data
    for key in ("train_file", "eval_file"):
        if not getattr(d, key):
            raise ConfigError(f"--data.{key} is required")
    task = TASKS[cfg.task]
    weights = DistillationWeights(cfg.temperature, cfg.alpha_kl, cfg.beta_task, cfg.gamma_cos)
    if cfg.train.fsdp:
        raise ConfigError("--train.fsdp: distill shards no teacher yet; use DDP (the default under torchrun)")
    info = distributed.init_distributed(cfg.device)  # joins torchrun's process group; no-op alone
    pretrained = load(cfg.teacher)
    teacher, tokenizer = pretrained.model, pretrained.require_tokenizer()
    if not isinstance(teacher, TaskModel):
        raise ConfigError(f"{cfg.teacher}: the teacher must be a fine-tuned model with a task head")
    id2label = pretrained.hf_config.get("id2label") or {}
    names = [str(id2label.get(str(i), id2label.get(i, ""))) for i in range(len(id2label))]
    # transformers' placeholder names (LABEL_0, ...) carry no meaning: take the label set from the data then.
    unnamed = names == [f"LABEL_{i}" for i in range(len(names))]
    labels: list[str] | None = list(d.labels) or (None if unnamed or not names else names)
    train_records = task.read(d, d.train_file, labels)
    train_records = train_records[: d.max_train_examples] if d.max_train_examples else train_records
    labels = labels or task.label_set(train_records)
    eval_records = task.read(d, d.eval_file, labels)
    eval_records = eval_records[: d.max_eval_examples] if d.max_eval_examples else eval_records

    teacher.to(info.device)
    student = student_from_teacher(teacher, cfg.student_layers or None)
    teacher_scores = task.evaluate(teacher, tokenizer, eval_records, labels, d)
    features = task.encode(tokenizer, train_records, labels, d)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    batches = ShuffledBatches(features, lambda xs: collate(xs, pad_id), d.batch_size, seed=cfg.seed,
                              rank=info.rank, world_size=info.world_size)
    start = time.perf_counter()
    result = train(Distiller(student, teacher), make_step(weights), batches, cfg.train, tokenizer=tokenizer)
    seconds = time.perf_counter() - start
    student_scores = task.evaluate(student, tokenizer, eval_records, labels, d)
    metric = task.main_metric
    summary: dict[str, Any] = {
        "teacher_layers": len(teacher.backbone.layers),
        "student_layers": len(student.backbone.layers),
        "teacher_parameters": count_parameters(teacher),
        "student_parameters": count_parameters(student),
        "parameter_ratio": count_parameters(student) / count_parameters(teacher),
        f"teacher_{metric}": teacher_scores[metric],
        f"student_{metric}": student_scores[metric],
        "score_ratio": student_scores[metric] / teacher_scores[metric] if teacher_scores[metric] else 0.0,
        "steps": result.step,
        "first_loss": result.history[0]["loss"],
        "final_loss": result.history[-1]["loss"],
        "train_seconds": seconds,
    }
    if cfg.out_dir and info.is_main:  # one writer: the other ranks wait at the barrier below
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model_dir = save_hf(student, out / "model", tokenizer=tokenizer)
        config_path = Path(model_dir) / "config.json"
        config = json.loads(config_path.read_text(encoding="utf-8"))
        config["id2label"] = {str(i): label for i, label in enumerate(labels)}
        config["label2id"] = {label: i for i, label in enumerate(labels)}
        write_json(config_path, config)
        write_json(out / "distill_report.json", summary)
        table = {k: float(v) for k, v in summary.items() if k != "train_seconds"}
        write_text(out / "distill_report.txt", format_table(f"distill {cfg.teacher}", table))
        summary["model_dir"] = str(model_dir)
    distributed.barrier()
    return summary
