"""Evaluation: held-out task scores and predictions of fine-tuned models, and in-context (few-shot)
evaluation of causal LMs from task YAML files, checked against lm-evaluation-harness 0.4.

    from plmkit.evaluation import load_task, run_tasks
    report = run_tasks(model, tokenizer, [load_task("sst2_4shot")], data_dir="../shared/data")

The `plmkit eval` and `plmkit predict` recipes are thin over this package (docs/evaluation.md).
"""

from __future__ import annotations

from plmkit.evaluation.runner import builtin_tasks, load_task, load_tasks, run_task, run_tasks
from plmkit.evaluation.spec import Generation, TaskSpec, parse_spec

__all__ = [
    "Generation",
    "TaskSpec",
    "builtin_tasks",
    "load_task",
    "load_tasks",
    "parse_spec",
    "run_task",
    "run_tasks",
]
