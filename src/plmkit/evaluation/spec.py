"""In-context evaluation tasks: the YAML format, its checks, and the prompts it builds.

A task file names a local data file, a prompt template over its fields, the target, and either answer
choices or a generation with stop sequences. Prompts are built exactly as lm-evaluation-harness 0.4
builds them (`ConfigurableTask.fewshot_context` / `construct_requests`), so the same file scored by
both gives the same numbers:

    context      = description + shot_1 + ... + shot_k + prompt(doc)
    shot         = prompt(shot_doc) + target_delimiter + answer(shot_doc) + fewshot_delimiter
    continuation = target_delimiter + choice      (multiple_choice: one per choice)
                 = target(doc)                    (loglikelihood: no delimiter, as lm-eval)

Shots are drawn per example with one `random.Random(fewshot_seed)` in document order (lm-eval's
`ContextSampler`); when the few-shot file is the evaluation file, the example itself is left out.

Templates use Python's `{field}` slots (also `{field[0]}` into a list); a target that renders to digits
is an index into the choices, as in lm-eval. `choices` is a list of templates (literal words or slots
such as "{chosen}") or the name of a field that holds the list. `fewshot_samples` fixes the
demonstrations (the first k, in order: lm-eval's `first_n` sampler), as for chain-of-thought exemplars.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from plmkit.errors import ConfigError, DataError

KINDS = ("multiple_choice", "loglikelihood", "perplexity", "generate_until")
DEFAULT_METRICS = {
    "multiple_choice": ["acc", "acc_norm"],
    "loglikelihood": ["perplexity", "acc"],
    "perplexity": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
    "generate_until": ["exact_match"],
}
METRICS = {
    "multiple_choice": {"acc", "acc_norm", "acc_bytes"},
    "loglikelihood": {"perplexity", "acc"},
    "perplexity": {"word_perplexity", "byte_perplexity", "bits_per_byte"},
    "generate_until": {"exact_match"},
}
EXTRACTORS = ("", "answer", "first_line")


@dataclass
class Generation:
    """How a generate_until task generates: greedy unless `samples` > 1 (self-consistency)."""

    until: list[str] = field(default_factory=list)
    max_new_tokens: int = 0
    samples: int = 1  # > 1: sample k solutions and take the majority answer (Wang et al. 2023)
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int = 0


@dataclass
class TaskSpec:
    """One task file. Paths are relative to the data root given when it is loaded."""

    task: str
    kind: str
    eval_file: str
    prompt: str
    target: str = ""
    choices: list[str] | str | None = None  # a list, or the name of a field holding the list
    fewshot_file: str = ""
    fewshot_samples: list[dict[str, Any]] = field(default_factory=list)  # fixed shots, used in order
    num_fewshot: int = 0
    fewshot_seed: int = 1234
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    description: str = ""
    extract: str = ""  # generate_until: "answer" (chain-of-thought final answer) or "first_line"
    generation: Generation = field(default_factory=Generation)
    metrics: list[str] = field(default_factory=list)
    limit: int = 0  # score the first N documents (0: all)
    text_split: str = ""  # perplexity on a .txt file: "" one document, "articles" WikiText headings
    source: str = ""  # the YAML file it came from, for messages

    def where(self, key: str) -> str:
        return f"task '{self.task}'" + (f" ({self.source})" if self.source else "") + f": {key}"


def template_fields(template: str) -> list[str]:
    """Root field names of a template's slots: '{a} {b[0]}' -> ['a', 'b']."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ConfigError(f"bad template {template!r}: {e}") from None
    return [re.split(r"[.\[]", name, maxsplit=1)[0] for _, name, _, _ in parsed if name is not None]


def render(spec: TaskSpec, key: str, template: str, doc: Mapping[str, Any]) -> str:
    """Fill a template from a document; a missing field is an error naming the task and field."""
    for name in template_fields(template):
        if name not in doc:
            raise DataError(
                f"{spec.where(key)} names field '{{{name}}}' that the data does not have "
                f"(fields: {', '.join(doc)})"
            )
    try:
        return template.format_map(doc)
    except (IndexError, KeyError, TypeError) as e:
        raise DataError(f"{spec.where(key)}: cannot fill {template!r}: {e}") from None


def parse_spec(raw: Mapping[str, Any], source: str = "") -> TaskSpec:
    """A TaskSpec from a YAML mapping, with every check that does not need the data."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: a task file must be a mapping of keys")
    name = str(raw.get("task") or Path(source).stem or "?")
    known = {f.name for f in fields(TaskSpec)} - {"source"}
    for key in raw:
        if key not in known:
            raise ConfigError(
                f"task '{name}' ({source}): unknown key '{key}' (keys: {', '.join(sorted(known))})"
            )
    values = dict(raw)
    values["task"] = name
    gen = values.pop("generation", None) or {}
    gen_known = {f.name for f in fields(Generation)}
    for key in gen:
        if key not in gen_known:
            raise ConfigError(f"task '{name}' ({source}): unknown key 'generation.{key}'")
    for key in ("kind", "eval_file", "prompt"):
        if key not in values or values[key] in (None, ""):
            raise ConfigError(f"task '{name}' ({source}): '{key}' is required")
    if isinstance(gen.get("until"), str):
        gen["until"] = [gen["until"]]
    spec = TaskSpec(**values, generation=Generation(**gen), source=source)
    check_spec(spec)
    return spec


def check_spec(spec: TaskSpec) -> None:
    if spec.kind not in KINDS:
        raise ConfigError(f"{spec.where('kind')} is {spec.kind!r}, not one of {', '.join(KINDS)}")
    if spec.num_fewshot < 0:
        raise ConfigError(f"{spec.where('num_fewshot')} must be >= 0, got {spec.num_fewshot}")
    if spec.kind == "multiple_choice":
        if spec.choices is None:
            raise ConfigError(f"{spec.where('choices')} is required for a multiple_choice task")
        if isinstance(spec.choices, list) and not spec.choices:
            raise ConfigError(f"{spec.where('choices')} is an empty list: give at least two answers")
        if not spec.target:
            raise ConfigError(f"{spec.where('target')} is required: the gold choice (text or index)")
    if spec.kind in ("loglikelihood", "generate_until") and not spec.target:
        raise ConfigError(f"{spec.where('target')} is required for a {spec.kind} task")
    if spec.kind == "generate_until":
        g = spec.generation
        if not g.until and g.max_new_tokens <= 0:
            raise ConfigError(
                f"{spec.where('generation')} needs a stop sequence (generation.until) or a length limit "
                "(generation.max_new_tokens), else it would generate to the context's end"
            )
        if g.samples < 1:
            raise ConfigError(f"{spec.where('generation.samples')} must be >= 1, got {g.samples}")
        if spec.extract not in EXTRACTORS:
            raise ConfigError(f"{spec.where('extract')} is {spec.extract!r}, not one of {EXTRACTORS}")
    if spec.num_fewshot and spec.kind == "perplexity":
        raise ConfigError(f"{spec.where('num_fewshot')}: a perplexity task takes no shots")
    allowed = METRICS[spec.kind]
    for m in spec.metrics:
        if m not in allowed:
            raise ConfigError(
                f"{spec.where('metrics')}: '{m}' is not a {spec.kind} metric ({', '.join(sorted(allowed))})"
            )
    if not spec.metrics:
        spec.metrics = list(DEFAULT_METRICS[spec.kind])


# ---- documents and prompts -------------------------------------------------------------------------


def choices_of(spec: TaskSpec, doc: Mapping[str, Any]) -> list[str]:
    if isinstance(spec.choices, list):
        choices = [render(spec, "choices", str(c), doc) for c in spec.choices]
    else:
        if spec.choices not in doc:
            raise DataError(
                f"{spec.where('choices')} names field '{spec.choices}' that the data does not have "
                f"(fields: {', '.join(doc)})"
            )
        value = doc[spec.choices]
        if not isinstance(value, list):
            raise DataError(
                f"{spec.where('choices')}: field '{spec.choices}' holds {type(value).__name__}, not a list"
            )
        choices = [str(c) for c in value]
    if not choices:
        raise DataError(f"{spec.where('choices')}: a document has an empty choice list")
    return choices


def target_of(spec: TaskSpec, doc: Mapping[str, Any]) -> str | int:
    """lm-eval's doc_to_target for a template: digits are a choice index when the task has choices."""
    text = render(spec, "target", spec.target, doc)
    if spec.choices is not None and text.isdigit():
        return int(text)
    return text


def gold_index(spec: TaskSpec, doc: Mapping[str, Any], choices: Sequence[str]) -> int:
    target = target_of(spec, doc)
    if isinstance(target, int):
        if target >= len(choices):
            raise DataError(f"{spec.where('target')}: index {target} but only {len(choices)} choices")
        return target
    if target not in choices:
        raise DataError(f"{spec.where('target')}: {target!r} is not one of the choices {choices}")
    return choices.index(target)


def answer_text(spec: TaskSpec, doc: Mapping[str, Any]) -> str:
    """The answer a demonstration shows (lm-eval's build_qa_turn: an index picks a choice)."""
    target = target_of(spec, doc)
    if isinstance(target, int) and spec.choices is not None:
        return choices_of(spec, doc)[target]
    return str(target)


class FewShotSampler:
    """lm-eval's ContextSampler: one Random(seed), k docs drawn per example in document order
    (or the first k of `fewshot_samples`, lm-eval's first_n)."""

    def __init__(self, spec: TaskSpec, pool: Sequence[Mapping[str, Any]], same_split: bool):
        self.spec = spec
        self.fixed = bool(spec.fewshot_samples)
        self.pool = list(spec.fewshot_samples) if self.fixed else list(pool)
        self.same_split = same_split and not self.fixed
        self.rnd = random.Random(spec.fewshot_seed)
        k = spec.num_fewshot
        available = len(self.pool) - (1 if self.same_split else 0)
        if k > available:
            split = "fewshot_samples" if self.fixed else (spec.fewshot_file or spec.eval_file)
            raise DataError(
                f"{spec.where('num_fewshot')} asks for {k} shots but the few-shot split ({split}) "
                f"holds {available}"
            )

    def sample(self, doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        k = self.spec.num_fewshot
        if k == 0:
            return []
        if self.fixed:
            return self.pool[:k]
        if not self.same_split:
            return self.rnd.sample(self.pool, k)
        drawn = [d for d in self.rnd.sample(self.pool, k + 1) if d != doc][:k]
        if len(drawn) < k:  # the pool holds copies of this doc: draw again without any of them
            drawn = self.rnd.sample([d for d in self.pool if d != doc], k)
        return drawn


def build_context(spec: TaskSpec, doc: Mapping[str, Any], shots: Sequence[Mapping[str, Any]]) -> str:
    parts = [spec.description]
    for shot in shots:
        answer = answer_text(spec, shot)
        # lm-eval leaves out the delimiter and answer of a shot whose answer is empty.
        delim = spec.target_delimiter if answer != "" else ""
        parts.append(render(spec, "prompt", spec.prompt, shot) + delim + answer
                     + (spec.fewshot_delimiter if answer != "" else ""))
    parts.append(render(spec, "prompt", spec.prompt, doc))
    return "".join(parts)


# ---- the same task for lm-evaluation-harness ----------------------------------------------------------


def _jinja(template: str) -> str:
    return re.sub(r"\{([^{}]+)\}", r"{{\1}}", template)


def lm_eval_config(spec: TaskSpec, data_dir: str | Path) -> dict[str, Any]:
    """The lm-evaluation-harness 0.4 task YAML (as a dict) that asks the same questions over the same
    local files, for side-by-side checks: `yaml.safe_dump` it into a folder given to lm-eval's
    `TaskManager(include_path=...)`. Answer extractors, self-consistency and .txt corpora have no
    one-to-one lm-eval form and are refused."""
    if spec.extract or spec.generation.samples > 1:
        raise ConfigError(
            f"{spec.where('extract')}: answer extraction and sampling have no lm-eval equivalent"
        )
    root = Path(data_dir)
    files = {"test": str(root / spec.eval_file)}
    if spec.fewshot_file and spec.fewshot_file != spec.eval_file:
        files["train"] = str(root / spec.fewshot_file)
    suffix = Path(spec.eval_file).suffix
    if suffix == ".txt":
        raise ConfigError(f"{spec.where('eval_file')}: a .txt corpus has no lm-eval dataset form here")
    kwargs: dict[str, Any] = {"data_files": files}
    if suffix in (".tsv", ".csv"):
        path = "csv"
        if suffix == ".tsv":
            kwargs["delimiter"] = "\t"
    else:
        path = "json"
    perplexity = spec.kind == "perplexity"
    out: dict[str, Any] = {
        "task": spec.task,
        "dataset_path": path,
        "dataset_kwargs": kwargs,
        "test_split": "test",
        "fewshot_split": "train" if "train" in files else "test",
        "output_type": "loglikelihood_rolling" if perplexity else spec.kind,
        "doc_to_text": "" if perplexity else _jinja(spec.prompt),
        "doc_to_target": _jinja(spec.prompt if perplexity else spec.target),
        "target_delimiter": spec.target_delimiter,
        "fewshot_delimiter": spec.fewshot_delimiter,
        "num_fewshot": spec.num_fewshot,
        "metric_list": [{"metric": m} for m in spec.metrics],
    }
    if spec.fewshot_samples:
        # lm-eval reads a few-shot split in preference to listed samples, so the split goes.
        del out["fewshot_split"]
        out["fewshot_config"] = {"sampler": "first_n", "samples": spec.fewshot_samples}
    if spec.description:
        out["description"] = spec.description
    if isinstance(spec.choices, str):
        out["doc_to_choice"] = spec.choices
    elif spec.choices is not None:
        slots = [re.fullmatch(r"\{(\w+)\}", c) for c in spec.choices]
        if all(slots):
            out["doc_to_choice"] = "{{[" + ", ".join(m.group(1) for m in slots if m) + "]}}"
        elif not any("{" in c for c in spec.choices):
            out["doc_to_choice"] = list(spec.choices)
        else:
            raise ConfigError(f"{spec.where('choices')}: mixed literal and templated choices")
    if spec.kind == "generate_until":
        g = spec.generation
        out["generation_kwargs"] = {"until": list(g.until), "do_sample": False,
                                    "max_gen_toks": g.max_new_tokens or 256}
    return out
