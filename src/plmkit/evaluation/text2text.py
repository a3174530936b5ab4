"""Held-out evaluation of text-to-text models: read a file, generate greedily, score.

What `plmkit finetune --task=text2text` reports after training and `plmkit eval` / `plmkit predict
--task=text2text` compute for any saved checkpoint: exact match (0-1), BLEU and ROUGE-L (0-100), and with
a mixture of tasks (`--data.mixture`) the same per task, classification tasks scored by the accuracy of the
generated label word. The training side (builders, corruption steps, heads, the mixture config) is
`plmkit.recipes.text2text`; reading and encoding records is `plmkit.data.text2text`.

Every function takes the data options as `d` (finetune's DataConfig or any object with the fields read).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from plmkit.data.text2text import TaskSpec, Text2TextExample, label_from_word, read_examples, task_of
from plmkit.metrics import bleu, exact_match, rouge_l
from plmkit.models.seq2seq_generation import generate_texts


def mixture_of(d: Any) -> Any:
    """`d.mixture` (finetune's `MixtureConfig`) when it lists sources, else None: one file, one task."""
    m = getattr(d, "mixture", None)
    return m if m is not None and m.sources else None


def task_spec(d: Any, path: str) -> TaskSpec:
    """How to read one text-to-text file: fields from `--data.text_column` and `--data.label_column`."""
    target = "target" if d.label_column == "label" else d.label_column
    return TaskSpec(name="", path=path, source_field=d.text_column or "source", target_field=target)


def read_text2text(d: Any, path: str, labels: Sequence[str] | None) -> list[Text2TextExample]:
    return read_examples(task_spec(d, path))


def check_prefixes(sources: Sequence[str], prefixes: Mapping[str, str], where: str = "source") -> list[str]:
    """The task of each source by its prefix; a source with none of the known prefixes is a one-line
    `DataError` naming it, its prefix and the known ones. No known prefixes: nothing to check."""
    if not prefixes:
        return [""] * len(sources)
    return [task_of(src, prefixes, where=f"{where} {i}") for i, src in enumerate(sources)]


def task_scores(
    hyps: Sequence[str], refs: Sequence[str], label_words: Mapping[str, str]
) -> dict[str, float]:
    """Classification (label words given): accuracy of the generated word mapped back to its label and
    the fraction of outputs that are no label word; generation: exact match, BLEU and ROUGE-L."""
    if label_words:
        predicted = [label_from_word(h, label_words) for h in hyps]
        gold = [label_from_word(r, label_words) for r in refs]
        n = len(hyps)
        return {
            "accuracy": sum(p is not None and p == g for p, g in zip(predicted, gold)) / n,
            "invalid": sum(p is None for p in predicted) / n,
        }
    return {"exact_match": exact_match(hyps, refs), "bleu": bleu(hyps, refs), "rougeL": rouge_l(hyps, refs)}


def generate_for_tasks(
    model: nn.Module,
    tokenizer: Any,
    sources: Sequence[str],
    d: Any,
    prefixes: Mapping[str, str] | None = None,
) -> list[str]:
    """Greedy outputs for `sources`; with known task `prefixes`, each source must carry one of them."""
    check_prefixes(sources, prefixes or {}, where="input")
    return generate_texts(
        model,
        tokenizer,
        list(sources),
        max_source_length=d.max_length,
        batch_size=d.eval_batch_size,
        max_new_tokens=d.max_length,
        eos_token_id=getattr(tokenizer, "eos_id", None),
    )


def evaluate_text2text(
    model: nn.Module, tokenizer: Any, records: Sequence[Text2TextExample], labels: Sequence[str], d: Any
) -> dict[str, float]:
    """Greedy generation on the evaluation records: exact match (0-1), BLEU and ROUGE-L (0-100); with a
    mixture, the same per task (`<task>/bleu`, ...; classification tasks `<task>/accuracy`)."""
    m = mixture_of(d)
    if m is None:
        hyps = generate_for_tasks(model, tokenizer, [r.source for r in records], d)
        return task_scores(hyps, [r.target for r in records], {})
    # The prefix, not the record's tag, decides the task, as it will for a deployed model's inputs.
    prefixes = m.prefixes()
    for r in records:
        task_of(r.source, prefixes, where=r.where or "eval")
    hyps = generate_for_tasks(model, tokenizer, [r.source for r in records], d)
    out: dict[str, float] = {"exact_match": exact_match(hyps, [r.target for r in records])}
    for src in m.sources:
        rows = [i for i, r in enumerate(records) if r.task == src.name]
        if rows:
            scores = task_scores([hyps[i] for i in rows], [records[i].target for i in rows], src.label_words)
            out.update({f"{src.name}/{k}": v for k, v in scores.items()})
    return out
