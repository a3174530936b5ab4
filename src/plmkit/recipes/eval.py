"""Evaluate a checkpoint: task scores on any file, in-context (few-shot) tasks, or perplexity.

Three modes, one per run:

    # the scores `plmkit finetune` reports, for any saved task model (plmkit's or Hugging Face's)
    plmkit eval --model=runs/sst2/model --task=classification --data.eval_file=sst2/dev.tsv
    # few-shot evaluation of a causal LM from task files (shipped names or YAML paths), as lm-eval does
    plmkit eval --model=runs/gpt/hf --tasks=sst2_4shot,hhh --data_dir=../shared/data --log_samples=s.jsonl
    # perplexity of a text file (causal LMs only)
    plmkit eval --model=runs/gpt/hf --perplexity=data/val.txt --seq_len=256
    # the same with int8 weight-only linear layers (`plmkit.quantize`)
    plmkit eval --model=runs/gpt/hf --perplexity=data/val.txt --seq_len=256 --quantize=int8

`--data_dir` is the root the task files' paths are relative to ('' : $PLMKIT_DATA, else ../shared/data).
The report is printed as JSON and, with --output, written there. Task format: docs/evaluation.md.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from plmkit.errors import ConfigError, DataError
from plmkit.evaluation.heldout import HeldOutData
from plmkit.training.runtime import DEVICE_HELP

CAUSAL_FAMILIES = ("gpt2", "llama")


@dataclass
class Config:
    model: str = field(default="", metadata={"help": "checkpoint directory (plmkit or Hugging Face)"})
    task: str = field(
        default="", metadata={"help": "score a file: classification, ner, qa or text2text ('': off)"}
    )
    data: HeldOutData = field(default_factory=HeldOutData, metadata={"help": "the file --task scores"})
    tasks: list[str] = field(
        default_factory=list, metadata={"help": "in-context tasks: shipped names or YAML files ('': off)"}
    )
    data_dir: str = field(
        default="", metadata={"help": "root of the task files' data ('': $PLMKIT_DATA or ../shared/data)"}
    )
    num_fewshot: int = field(default=-1, metadata={"help": "shots for every task (-1: each task's own)"})
    limit: int = field(default=0, metadata={"help": "score the first N documents of each task (0: all)"})
    log_samples: str = field(
        default="", metadata={"help": "JSONL file for every prompt, choice log-probs and prediction"}
    )
    output: str = field(default="", metadata={"help": "also write the JSON report here ('': print only)"})
    perplexity: str = field(default="", metadata={"help": "text file to measure perplexity on ('': off)"})
    seq_len: int = field(default=0, metadata={"help": "perplexity: tokens per window (0: the context)"})
    batch_size: int = field(default=8, metadata={"help": "windows or log-likelihood rows per forward pass"})
    allow_pickle: bool = field(default=False, metadata={"help": "allow a pickle .bin checkpoint (runs code)"})
    device: str = field(default="auto", metadata={"help": "where to run the model: " + DEVICE_HELP})
    quantize: str = field(default="", metadata={
        "help": "score with quantized weights: int8 (weight-only, per output channel) or '' (as stored)"})


@torch.inference_mode()
def perplexity(model: torch.nn.Module, ids: list[int], seq_len: int, batch_size: int) -> dict[str, float]:
    """exp(mean next-token loss) over `ids`, in windows of seq_len + 1 tokens sharing one boundary."""
    from plmkit.objectives.clm import causal_lm_loss

    stream = torch.tensor(ids, dtype=torch.long)
    starts = list(range(0, max(len(ids) - 1, 0), seq_len))
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        windows = [stream[s:s + seq_len + 1] for s in starts[i:i + batch_size]]
        width = max(len(w) for w in windows) - 1
        inputs = torch.zeros(len(windows), width, dtype=torch.long)
        labels = torch.full((len(windows), width), -100, dtype=torch.long)
        mask = torch.zeros(len(windows), width, dtype=torch.long)
        for row, w in enumerate(windows):
            inputs[row, : len(w) - 1] = w[:-1]
            labels[row, : len(w) - 1] = w[1:]
            mask[row, : len(w) - 1] = 1
        device = next(model.parameters()).device
        loss_sum, n = causal_lm_loss(model(inputs.to(device), mask.to(device)), labels.to(device))
        total += float(loss_sum)
        count += int(n)
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count}


def load_model(cfg: Config) -> Any:
    """The one place eval loads its checkpoint (a `plmkit.load` Pretrained). Options that change the
    loaded model before it is scored, such as quantization, belong here."""
    from plmkit.interop.hf import load
    from plmkit.interop.quantized import is_quantized_dir, load_quantized
    from plmkit.models.quantize import quantize
    from plmkit.training.runtime import resolve_device

    device = resolve_device(cfg.device)  # before loading: a bad --device fails before any work
    if is_quantized_dir(cfg.model):  # a `plmkit.save_quantized` export
        pre = load_quantized(cfg.model)
    else:
        pre = load(cfg.model, allow_pickle=cfg.allow_pickle)
    if cfg.quantize:
        quantize(pre.model, cfg.quantize)
    pre.model.to(device)
    return pre


def data_root(cfg: Config) -> str:
    return cfg.data_dir or os.environ.get("PLMKIT_DATA") or str(Path("..") / "shared" / "data")


def require_causal_lm(pre: Any, what: str) -> None:
    """A one-line refusal for models that do not predict the next token (BERT-style encoders, T5, BART,
    or a decoder carrying a task head)."""
    from plmkit.models.heads import LMHead

    model_type = pre.hf_config.get("model_type") or getattr(pre.model.config, "model_type", "?")
    if model_type in CAUSAL_FAMILIES and isinstance(getattr(pre.model, "head", None), LMHead):
        return
    if model_type in ("bert", "roberta", "albert", "distilbert"):
        kind = "an encoder: a masked LM has no left-to-right perplexity (its pseudo-perplexity is "
        kind += "a different quantity, not computed here)"
    elif model_type in ("t5", "bart"):
        kind = "an encoder-decoder, not a causal LM"
    else:
        kind = f"a {type(getattr(pre.model, 'head', pre.model)).__name__} model, not a causal LM"
    raise ConfigError(f"{what} needs a causal LM (gpt2, llama); {cfg_path(pre)} is {model_type}, {kind}")


def cfg_path(pre: Any) -> str:
    return str(pre.path) if pre.path is not None else "the checkpoint"


def write_jsonl(path: str, rows: list[dict]) -> None:
    from plmkit.io import write_text

    write_text(Path(path), "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def run_perplexity(cfg: Config, pre: Any) -> dict:
    file = Path(cfg.perplexity)
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    require_causal_lm(pre, "eval --perplexity")
    tokenizer = pre.require_tokenizer()
    ids = tokenizer.encode(file.read_text(encoding="utf-8"), add_special_tokens=False)
    if len(ids) < 2:
        raise DataError(f"{file}: fewer than 2 tokens, nothing to predict")
    context = getattr(pre.model.config, "max_positions", 1024)
    seq_len = cfg.seq_len or context
    if seq_len > context:
        raise ConfigError(f"seq_len={seq_len} exceeds the model's context window of {context}")
    result = perplexity(pre.model.eval(), ids, seq_len, cfg.batch_size)
    result["file"] = str(file)
    return result


def run_heldout(cfg: Config, pre: Any) -> dict:
    from plmkit.evaluation.heldout import prepare

    task, labels, d, records = prepare(cfg.task, pre.model, pre.hf_config, cfg.data, cfg_path(pre))
    tokenizer = pre.require_tokenizer()
    scores = task.evaluate(pre.model, tokenizer, records, labels, d)
    return {"task": cfg.task, "file": d.eval_file, "examples": len(records), **scores}


def in_context(cfg: Config, pre: Any, log_samples: bool) -> dict:
    """run_tasks over --tasks with the recipe's options: {"results": ..., "samples": ...}."""
    from plmkit.evaluation import load_tasks, run_tasks

    specs = load_tasks(cfg.tasks)
    if cfg.num_fewshot >= 0:
        for spec in specs:
            spec.num_fewshot = cfg.num_fewshot
    require_causal_lm(pre, "in-context evaluation (--tasks)")
    return run_tasks(
        pre.model.eval(), pre.require_tokenizer(), specs, data_root(cfg), cfg.batch_size,
        log_samples=log_samples, limit=cfg.limit,
    )


def sample_rows(samples: dict[str, list[dict]]) -> list[dict]:
    return [{"task": t, "doc": i, **s} for t, ss in samples.items() for i, s in enumerate(ss)]


def run_in_context(cfg: Config, pre: Any) -> dict:
    report = in_context(cfg, pre, log_samples=bool(cfg.log_samples))
    if cfg.log_samples:
        write_jsonl(cfg.log_samples, sample_rows(report.pop("samples")))
        report["log_samples"] = cfg.log_samples
    report["model"] = cfg.model
    report["data_dir"] = data_root(cfg)
    return report


def check(cfg: Config, command: str = "eval") -> None:
    if not cfg.model:
        raise ConfigError(f"{command} needs --model=DIR")
    options = (("--perplexity", cfg.perplexity), ("--task", cfg.task), ("--tasks", cfg.tasks))
    modes = [name for name, value in options if value]
    if len(modes) != 1:
        raise ConfigError(
            f"{command} needs exactly one of --task=classification|ner|qa|text2text (with --data.eval_file), "
            f"--tasks=NAME,... or --perplexity=FILE; got {', '.join(modes) or 'none'}"
        )


def run(cfg: Config) -> dict:
    check(cfg)
    pre = load_model(cfg)
    if cfg.perplexity:
        result = run_perplexity(cfg, pre)
    elif cfg.task:
        result = run_heldout(cfg, pre)
    else:
        result = run_in_context(cfg, pre)
    if cfg.output:
        from plmkit.io import write_json

        write_json(Path(cfg.output), result)
    return result
