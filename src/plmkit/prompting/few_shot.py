"""Few-shot prompts: k rendered demonstrations followed by the query, rendered up to its answer slot."""

from __future__ import annotations

import random
import string
from collections.abc import Mapping, Sequence
from typing import Any

from plmkit.errors import ConfigError


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def render(template: str, record: Mapping[str, Any], answer_field: str | None = None) -> str:
    """Fill `template` from `record`; with `answer_field`, stop right before that slot (the query form)."""
    fields = _fields(template)
    if answer_field is not None:
        if answer_field not in fields:
            raise ConfigError(f"template has no slot '{{{answer_field}}}' (slots: {', '.join(fields)})")
        template = template[: template.index("{" + answer_field + "}")]
        fields = _fields(template)
    missing = [f for f in fields if f not in record]
    if missing:
        raise ConfigError(
            f"record has no field '{missing[0]}' that the template needs (has {', '.join(record)})"
        )
    return template.format(**{f: record[f] for f in fields})


def build_few_shot_prompt(
    template: str,
    demonstrations: Sequence[Mapping[str, Any]],
    query: Mapping[str, Any],
    k: int,
    seed: int = 0,
    answer_field: str | None = None,
    separator: str = "\n\n",
) -> str:
    """k demonstrations drawn from `demonstrations` (seeded), each rendered in full, then the query.

    The answer slot is `answer_field`, by default the template's last slot; the query is rendered up to
    it, so the model's continuation is the answer. k=0 gives the zero-shot prompt.
    """
    fields = _fields(template)
    if not fields:
        raise ConfigError("template has no {slots}; write e.g. 'Review: {sentence}\\nSentiment: {label}'")
    answer_field = answer_field or fields[-1]
    if k < 0:
        raise ConfigError(f"k must be >= 0, got {k}")
    if k > len(demonstrations):
        raise ConfigError(f"k={k} demonstrations requested but only {len(demonstrations)} given")
    shots = random.Random(seed).sample(list(demonstrations), k)
    parts = [render(template, d) for d in shots] + [render(template, query, answer_field)]
    return separator.join(parts)
