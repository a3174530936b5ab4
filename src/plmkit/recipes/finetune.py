"""Fine-tune a pretrained encoder for classification, named-entity tagging or extractive QA.

Loads `--pretrained` (a Hugging Face or plmkit directory) with `plmkit.load`, puts the task's head on the
backbone (`TASKS[--task]`), trains through the one training loop, evaluates on `--data.eval_file`, and
writes into `--out_dir`: `model/` (a Hugging Face checkpoint that transformers loads with the matching
`...ForSequenceClassification`, `...ForTokenClassification` or `...ForQuestionAnswering`),
`eval_report.json` and `eval_report.txt` (a readable table).

    plmkit finetune --task=classification --pretrained=path/to/minilm \\
        --data.train_file=sst2/train.tsv --data.eval_file=sst2/dev.tsv --out_dir=runs/sst2
    plmkit finetune --task=ner --pretrained=... --data.train_file=eng.train --data.eval_file=eng.testa
    plmkit finetune --task=qa --pretrained=... --data.train_file=train.json --data.eval_file=dev.json

Input formats: classification reads GLUE TSV (`.tsv`), JSONL or CSV with `text` / `label` (and
`text_pair`) columns, renamed with `--data.text_column` etc.; ner reads CoNLL; qa reads SQuAD JSON.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.data.records import LabeledText, QAExample, TaggedTokens
from plmkit.data.tasks import (
    collate,
    encode_classification,
    encode_qa,
    encode_tagging,
)
from plmkit.errors import ConfigError
from plmkit.evaluation.heldout import (  # the scoring `plmkit eval` runs on any saved checkpoint
    evaluate_classification,
    evaluate_qa,
    evaluate_tagging,
    read_classification,
    read_qa,
    read_tagging,
    resolve_lengths,
)
from plmkit.evaluation.text2text import evaluate_text2text, read_text2text
from plmkit.io import write_json, write_text
from plmkit.models.heads import (
    SpanHead,
    TaskModel,
    TokenClassificationHead,
    attach_head,
    hf_classification_head,
)
from plmkit.peft import PeftOptions
from plmkit.recipes import text2text as t2t
from plmkit.training import StepOutput, TrainConfig, distributed, train
from plmkit.training.runtime import DEVICE_HELP
from plmkit.training.steps import classification_step, span_step, tagging_step


@dataclass
class DataConfig:
    train_file: str = field(
        default="", metadata={"help": "training file (TSV/JSONL/CSV, CoNLL or SQuAD JSON)"}
    )
    eval_file: str = field(default="", metadata={"help": "evaluation file in the same format"})
    text_column: str = field(default="", metadata={"help": "text column ('': sentence for TSV, else text)"})
    pair_column: str = field(default="", metadata={"help": "second-segment column for pair tasks ('': none)"})
    label_column: str = field(default="label", metadata={"help": "label column of TSV/JSONL/CSV files"})
    labels: list[str] = field(
        default_factory=list, metadata={"help": "label set in id order ('': sorted labels of the train file)"}
    )
    max_train_examples: int = field(default=0, metadata={"help": "use the first N training records (0: all)"})
    max_eval_examples: int = field(
        default=0, metadata={"help": "use the first N evaluation records (0: all)"}
    )
    max_length: int = field(
        default=0, metadata={"help": "tokens per sequence, QA: per window (0: qa 384, others 128)"}
    )
    stride: int = field(
        default=0, metadata={"help": "QA: context tokens shared by consecutive windows (0: max_length // 3)"}
    )
    max_answer_length: int = field(default=30, metadata={"help": "QA: longest answer span in tokens"})
    batch_size: int = field(default=32, metadata={"help": "training examples per micro-batch"})
    eval_batch_size: int = field(default=64, metadata={"help": "examples per evaluation batch"})
    mixture: t2t.MixtureConfig = field(
        default_factory=t2t.MixtureConfig,
        metadata={"help": "text2text: several tasks in one run (sources replace train_file/eval_file)"},
    )


def _default_train() -> TrainConfig:
    # BERT's fine-tuning recipe (Devlin et al. 2019, appendix A.3): small lr, linear decay to zero.
    return TrainConfig(
        max_steps=1000, lr=5e-5, schedule="linear", min_lr_ratio=0.0, warmup_steps=0, weight_decay=0.01
    )


@dataclass
class Config:
    task: str = field(default="classification", metadata={"help": "task", "choices": lambda: TASKS})
    pretrained: str = field(
        default="", metadata={"help": "pretrained model directory (Hugging Face or plmkit)"}
    )
    out_dir: str = field(
        default="", metadata={"help": "where model/, eval_report.json/.txt go ('': nowhere)"}
    )
    pooling: str = field(default="cls", metadata={"help": "classification pooling: cls, mean or last"})
    dropout: float = field(default=0.1, metadata={"help": "dropout of the task head"})
    seed: int = field(default=0, metadata={"help": "seed of the head's initialization and the data order"})
    device: str = field(default="auto", metadata={"help": "where to train: " + DEVICE_HELP})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "task data"})
    train: TrainConfig = field(default_factory=_default_train, metadata={"help": "training loop"})
    peft: PeftOptions = field(
        default_factory=PeftOptions, metadata={"help": "parameter-efficient fine-tuning (method '': full)"}
    )


# ---- heads ---------------------------------------------------------------------------------------------


def classification_head(backbone: nn.Module, num_labels: int, cfg: Config) -> nn.Module:
    """The family's Hugging Face classification layout (`plmkit.models.heads.hf_classification_head`)."""
    return hf_classification_head(backbone, num_labels, cfg.pooling, cfg.dropout)


def token_head(backbone: nn.Module, num_labels: int, cfg: Config) -> nn.Module:
    return TokenClassificationHead(backbone.config.d_model, num_labels, cfg.dropout)


def span_head(backbone: nn.Module, num_labels: int, cfg: Config) -> nn.Module:
    return SpanHead(backbone.config.d_model)


# ---- reading and encoding ------------------------------------------------------------------------------


def _limit(records: list, n: int) -> list:
    return records[:n] if n > 0 else records


def classification_labels(records: Sequence[LabeledText]) -> list[str]:
    return sorted({r.label for r in records})


def tagging_labels(records: Sequence[TaggedTokens]) -> list[str]:
    # "O" first so that id 0 is "no entity" (the prediction for words cut off by max_length).
    tags = {t for r in records for t in r.tags}
    return (["O"] if "O" in tags else []) + sorted(tags - {"O"}, key=lambda t: (t[2:], t))


def no_labels(records: Sequence[QAExample]) -> list[str]:
    return []


def encode_cls(tokenizer: Any, records: Sequence, labels: Sequence[str], d: DataConfig) -> list[dict]:
    return encode_classification(tokenizer, records, labels, d.max_length)


def encode_ner(tokenizer: Any, records: Sequence, labels: Sequence[str], d: DataConfig) -> list[dict]:
    return encode_tagging(tokenizer, records, labels, d.max_length)


def encode_span(tokenizer: Any, records: Sequence, labels: Sequence[str], d: DataConfig) -> list[dict]:
    return [f.as_dict() for f in encode_qa(tokenizer, records, d.max_length, d.stride)]


# ---- the task table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """Everything `run` needs to know about a task; add a task by adding a row to TASKS."""

    read: Callable[[DataConfig, str, Sequence[str] | None], list]
    label_set: Callable[[Sequence[Any]], list[str]]
    encode: Callable[[Any, Sequence[Any], Sequence[str], DataConfig], list[dict]]
    head: Callable[[nn.Module, int, Config], nn.Module]
    step: Callable[[nn.Module, dict[str, torch.Tensor]], StepOutput]
    evaluate: Callable[[nn.Module, Any, Sequence[Any], Sequence[str], DataConfig], dict[str, float]]
    main_metric: str
    # Tasks that read several sources at once (text2text mixtures): (train, eval) records, or None to
    # read data.train_file / data.eval_file; and their own batch sampler, or None to shuffle.
    read_splits: Callable[[DataConfig], tuple[list, list] | None] | None = None
    batches: Callable[[Sequence[dict], Sequence[Any], DataConfig, int, Callable], Any] | None = None
    # --data.max_length when it is 0. QA: transformers' run_qa.py windows (384 tokens, stride 128).
    max_length: int = 128


TASKS: dict[str, Task] = {
    "classification": Task(
        read_classification,
        classification_labels,
        encode_cls,
        classification_head,
        classification_step,
        evaluate_classification,
        "accuracy",
    ),
    "ner": Task(read_tagging, tagging_labels, encode_ner, token_head, tagging_step, evaluate_tagging, "f1"),
    "qa": Task(read_qa, no_labels, encode_span, span_head, span_step, evaluate_qa, "f1", max_length=384),
    "text2text": Task(
        read_text2text,
        t2t.no_label_set,
        t2t.encode_text2text,
        t2t.text2text_head,
        t2t.text2text_step,
        evaluate_text2text,
        "rougeL",
        read_splits=t2t.read_mixture,
        batches=t2t.mixture_batches,
    ),
}


def build_task_model(backbone: nn.Module, task: Task, num_labels: int, cfg: Config) -> TaskModel:
    """Put a freshly initialized task head on a pretrained backbone (the head drawn from `cfg.seed`)."""
    if isinstance(backbone, TaskModel):  # a checkpoint loaded with a head: keep only its encoder
        backbone = backbone.backbone
    torch.manual_seed(cfg.seed)
    return attach_head(backbone, task.head(backbone, num_labels, cfg))


def format_table(title: str, scores: dict[str, float]) -> str:
    """A two-column plain-text table of the scores."""
    width = max(len(k) for k in scores)
    lines = [title, "-" * max(len(title), width + 12)]
    for key, value in scores.items():
        lines.append(f"{key:<{width}}  {value:>10.4f}")
    return "\n".join(lines) + "\n"


def _write_label_names(model_dir: Path, labels: Sequence[str]) -> None:
    # transformers reads id2label/label2id from config.json; only the recipe knows the names.
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["id2label"] = {str(i): label for i, label in enumerate(labels)}
    config["label2id"] = {label: i for i, label in enumerate(labels)}
    write_json(config_path, config)


def run(cfg: Config) -> dict:
    from plmkit.data.batches import ShuffledBatches
    from plmkit.interop.hf import FAMILIES, load, save_hf

    if cfg.task not in TASKS:
        raise ConfigError(f"task {cfg.task!r} is not one of {', '.join(TASKS)}")
    task = TASKS[cfg.task]
    d = cfg.data
    for key in ("pretrained",):
        if not getattr(cfg, key):
            raise ConfigError(f"--{key} is required")
    if d.mixture.sources and task.read_splits is None:
        raise ConfigError(f"--data.mixture is for --task=text2text, not {cfg.task}")
    given = list(d.labels) or None
    splits = task.read_splits(d) if task.read_splits is not None else None
    if splits is not None:
        train_records, eval_records = splits
        labels = given or task.label_set(train_records)
    else:
        for key in ("train_file", "eval_file"):
            if not getattr(d, key):
                raise ConfigError(f"--data.{key} is required")
        train_records = _limit(task.read(d, d.train_file, given), d.max_train_examples)
        labels = given or task.label_set(train_records)
        eval_records = _limit(task.read(d, d.eval_file, labels or None), d.max_eval_examples)

    info = distributed.init_distributed(cfg.device)  # joins torchrun's process group; no-op alone
    pretrained = load(cfg.pretrained)
    tokenizer = pretrained.require_tokenizer()
    cfg = replace(cfg, data=resolve_lengths(d, task.max_length, pretrained.model))
    d = cfg.data
    model = build_task_model(pretrained.model, task, len(labels), cfg)
    model_type = getattr(model.config, "model_type", None)
    if cfg.out_dir and model_type in FAMILIES:
        FAMILIES[model_type].export_to_hf(
            model
        )  # a head with no transformers class fails now, not after training
    if cfg.peft.method:
        from plmkit.peft import apply_peft

        # The new head is trained in full beside the adapter (peft's modules_to_save).
        model = apply_peft(model, cfg.peft, modules_to_save=cfg.peft.modules_to_save or "head")
    from plmkit.peft import trainable_report

    if info.is_main:
        print(trainable_report(model), flush=True)
    features = task.encode(tokenizer, train_records, labels, d)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    collate_fn = lambda xs: collate(xs, pad_id)  # noqa: E731
    batches = task.batches(features, train_records, d, cfg.seed, collate_fn) if task.batches else None
    if batches is None:
        batches = ShuffledBatches(features, collate_fn, d.batch_size, seed=cfg.seed,
                                  rank=info.rank, world_size=info.world_size)
    elif info.world_size > 1:
        raise ConfigError(f"--task={cfg.task} with several sources does not run under torchrun yet")

    def eval_fn(m: nn.Module) -> dict[str, float]:
        return task.evaluate(m, tokenizer, eval_records, labels, d)

    start = time.perf_counter()
    model.to(info.device)
    result = train(model, task.step, batches, cfg.train, eval_fn=eval_fn, tokenizer=tokenizer)
    seconds = time.perf_counter() - start
    scores = dict(result.final_eval)
    summary: dict[str, Any] = {
        "task": cfg.task,
        "steps": result.step,
        "first_loss": result.history[0]["loss"],
        "final_loss": result.history[-1]["loss"],
        "train_seconds": seconds,
        "train_examples": len(train_records),
        "eval_examples": len(eval_records),
        **scores,
    }
    model = distributed.full_model(model)  # every rank takes part; under FSDP2 only rank 0 gets a model
    if cfg.out_dir and info.is_main:  # one writer: the other ranks wait at the barrier below
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        # PEFT runs write adapter/; LoRA and IA3 also fold into a plain model/ that transformers loads.
        mergeable = cfg.peft.method in ("", "lora", "ia3")
        if cfg.peft.method:
            from plmkit.peft import merge_and_unload, save_adapter

            # The adapter directory alone rebuilds this task model on the base (plmkit merge/load_adapter).
            adapter_dir = save_adapter(model, out / "adapter", base=cfg.pretrained, labels=labels)
            summary["adapter_dir"] = str(adapter_dir)
            if mergeable:
                model = merge_and_unload(model)
        model_dir = save_hf(model, out / "model", tokenizer=tokenizer) if mergeable else None
        if labels and model_dir is not None:
            _write_label_names(Path(model_dir), labels)
        if cfg.task == "text2text" and model_dir is not None:
            t2t.write_task_table(Path(model_dir), d)
        write_json(out / "eval_report.json", summary)
        where = d.eval_file or "the sources' eval files"
        table = format_table(f"{cfg.task} on {where} ({len(eval_records)} examples)", scores)
        write_text(out / "eval_report.txt", table)
        if model_dir is not None:
            summary["model_dir"] = str(model_dir)
    distributed.barrier()
    return summary
