"""Run in-context tasks on a causal LM: build the requests, score them, aggregate with standard errors.

    specs = load_tasks(["sst2_4shot"], data_dir="../shared/data")
    report = run_tasks(model, tokenizer, specs, data_dir="../shared/data", log_samples=True)
    report["results"]["sst2_4shot"]    # {"acc": ..., "acc_stderr": ..., "acc_norm": ..., "n": 872, ...}

Scores follow lm-evaluation-harness 0.4: `acc` is the argmax of the summed log-likelihoods, `acc_norm`
divides each by its choice's length in characters (lm-eval's `acc_norm`; equal to its byte length for
ASCII answers) and `acc_bytes` by its UTF-8 byte length; `perplexity` of a loglikelihood task is
exp(-mean log-likelihood per document); a perplexity task gives word and byte perplexity and bits per
byte over the whole corpus. Standard errors of means are the sample standard deviation over sqrt(n)
(lm-eval's `mean_stderr`); for the corpus-level ratios plmkit uses the delta method where lm-eval
bootstraps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from plmkit.data.readers import _rows
from plmkit.errors import ConfigError, DataError
from plmkit.evaluation import lm
from plmkit.evaluation.spec import (
    FewShotSampler,
    TaskSpec,
    build_context,
    choices_of,
    gold_index,
    parse_spec,
    render,
    target_of,
)
from plmkit.progress import progress_bar
from plmkit.prompting.answers import extract_answer, self_consistency

TASK_DIR = Path(__file__).parent / "tasks"
_ARTICLE = re.compile(r"^ = [^=].* = $")


# ---- task files ------------------------------------------------------------------------------------


def builtin_tasks() -> list[str]:
    """Names of the task files shipped with plmkit."""
    return sorted(p.stem for p in TASK_DIR.glob("*.yaml"))


def load_task(name_or_path: str | Path) -> TaskSpec:
    """A shipped task by name (`sst2_4shot`), or a task YAML file by path."""
    import yaml

    path = Path(name_or_path)
    if not path.suffix:
        path = TASK_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"no task named '{name_or_path}' (shipped: {', '.join(builtin_tasks())})")
    if not path.is_file():
        raise ConfigError(f"task file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {' '.join(str(e).split())}") from None
    return parse_spec(raw, source=str(path) if path.parent != TASK_DIR else path.name)


def load_tasks(names: Sequence[str | Path]) -> list[TaskSpec]:
    return [load_task(n) for n in names]


# ---- documents -------------------------------------------------------------------------------------


def resolve(spec: TaskSpec, key: str, data_dir: str | Path | None) -> Path:
    """A task's data path: absolute as written, else under the data root."""
    value = getattr(spec, key)
    path = Path(value)
    if not path.is_absolute():
        if data_dir is None:
            raise ConfigError(f"{spec.where(key)} {value} is relative: give a data root (--data_dir)")
        path = Path(data_dir) / path
    if not path.exists():
        raise DataError(f"{spec.where(key)} {path} not found (data root: {data_dir})")
    return path


def read_docs(spec: TaskSpec, path: Path) -> list[dict[str, Any]]:
    """Documents of a JSONL/CSV/TSV file (one per row), or of a .txt file for a perplexity task
    (the whole file, or one per WikiText article with text_split: articles)."""
    if path.suffix == ".txt":
        text = path.read_text(encoding="utf-8")
        if spec.text_split != "articles":
            return [{"text": text}]
        docs: list[list[str]] = []
        for line in text.splitlines(keepends=True):
            if _ARTICLE.match(line.rstrip("\n")) or not docs:
                docs.append([])
            docs[-1].append(line)
        return [{"text": "".join(d)} for d in docs if "".join(d).strip()]
    docs = [row for _, row in _rows(path)]
    if not docs:
        raise DataError(f"{spec.where('eval_file')} {path} holds no documents")
    return docs


# ---- one task ---------------------------------------------------------------------------------------


def _stderr(values: Sequence[float]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def _ratio_stderr(num: Sequence[float], den: Sequence[float]) -> float:
    """Delta-method standard error of sum(num) / sum(den) over documents."""
    n = len(num)
    if n < 2:
        return float("nan")
    r = sum(num) / sum(den)
    mean_den = sum(den) / n
    residuals = [a - r * b for a, b in zip(num, den)]
    return _stderr(residuals) / mean_den


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def run_task(
    model: nn.Module,
    tokenizer: Any,
    spec: TaskSpec,
    data_dir: str | Path | None = None,
    batch_size: int = 16,
    log_samples: bool = False,
    progress: bool = True,
    limit: int = 0,
) -> dict[str, Any]:
    """Scores of one task: {metric: value, metric_stderr: value, n, num_fewshot}, plus "samples"
    (every prompt, its continuations' log-probabilities and the prediction) with log_samples."""
    eval_path = resolve(spec, "eval_file", data_dir)
    docs = read_docs(spec, eval_path)
    n_docs = limit or spec.limit
    if n_docs:
        docs = docs[:n_docs]
    contexts: list[str] = []
    if spec.kind != "perplexity":
        same = not spec.fewshot_file or spec.fewshot_file == spec.eval_file
        pool = docs if same and not n_docs else (
            read_docs(spec, eval_path) if same else read_docs(spec, resolve(spec, "fewshot_file", data_dir))
        )
        sampler = FewShotSampler(spec, pool, same)
        contexts = [build_context(spec, doc, sampler.sample(doc)) for doc in docs]
    bar = progress_bar(len(docs), desc=spec.task, disable=not progress, unit="doc")
    try:
        runner = {
            "multiple_choice": _multiple_choice,
            "loglikelihood": _loglikelihood,
            "perplexity": _perplexity,
            "generate_until": _generate,
        }[spec.kind]
        scores, samples = runner(model, tokenizer, spec, docs, contexts, batch_size, bar.update)
    finally:
        bar.close()
    out: dict[str, Any] = {"kind": spec.kind, "num_fewshot": spec.num_fewshot, "n": len(docs), **scores}
    if log_samples:
        out["samples"] = samples
    return out


def run_tasks(
    model: nn.Module,
    tokenizer: Any,
    specs: Sequence[TaskSpec],
    data_dir: str | Path | None = None,
    batch_size: int = 16,
    log_samples: bool = False,
    progress: bool = True,
    limit: int = 0,
) -> dict[str, Any]:
    """{"results": {task: scores}} (and {"samples": {task: [...]}} with log_samples)."""
    results: dict[str, Any] = {}
    samples: dict[str, Any] = {}
    for spec in specs:
        scores = run_task(model, tokenizer, spec, data_dir, batch_size, log_samples, progress, limit)
        if log_samples:
            samples[spec.task] = scores.pop("samples")
        results[spec.task] = scores
    return {"results": results, **({"samples": samples} if log_samples else {})}


# ---- the kinds ----------------------------------------------------------------------------------------


def _means(per_doc: Mapping[str, Sequence[float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, values in per_doc.items():
        out[name] = sum(values) / len(values)
        out[f"{name}_stderr"] = _stderr(values)
    return out


def _multiple_choice(model, tokenizer, spec, docs, contexts, batch_size, bar):
    requests, spans, golds, all_choices = [], [], [], []
    for doc, ctx in zip(docs, contexts):
        choices = choices_of(spec, doc)
        golds.append(gold_index(spec, doc, choices))
        all_choices.append(choices)
        spans.append((len(requests), len(choices)))
        requests += [lm.encode_pair(tokenizer, ctx, spec.target_delimiter + c) for c in choices]
    scored = lm.loglikelihoods(model, requests, batch_size, _per_doc(bar, spans))
    per_doc: dict[str, list[float]] = {m: [] for m in spec.metrics}
    samples = []
    for (start, k), gold, choices, ctx in zip(spans, golds, all_choices, contexts):
        lls = [s.logprob for s in scored[start : start + k]]
        preds = {
            "acc": _argmax(lls),
            "acc_norm": _argmax([ll / len(c) for ll, c in zip(lls, choices)]),
            "acc_bytes": _argmax([ll / len(c.encode("utf-8")) for ll, c in zip(lls, choices)]),
        }
        for m in spec.metrics:
            per_doc[m].append(1.0 if preds[m] == gold else 0.0)
        samples.append({"context": ctx, "choices": choices, "logprobs": lls,
                        "is_greedy": [s.is_greedy for s in scored[start : start + k]],
                        "prediction": preds["acc"], "target": gold})
    return _means(per_doc), samples


def _per_doc(bar, spans):
    """Progress in documents from progress in requests."""
    counts = iter([k for _, k in spans])
    state = {"pending": 0}

    def update(rows: int) -> None:
        state["pending"] += rows
        done = 0
        while True:
            if "next" not in state:
                state["next"] = next(counts, None)
            if state["next"] is None or state["pending"] < state["next"]:
                break
            state["pending"] -= state.pop("next")
            done += 1
        bar(done)

    return update


def _loglikelihood(model, tokenizer, spec, docs, contexts, batch_size, bar):
    targets = [str(target_of(spec, doc)) for doc in docs]
    requests = [lm.encode_pair(tokenizer, ctx, t) for ctx, t in zip(contexts, targets)]
    scored = lm.loglikelihoods(model, requests, batch_size, bar)
    lls = [s.logprob for s in scored]
    out: dict[str, float] = {}
    if "perplexity" in spec.metrics:
        mean_ll = sum(lls) / len(lls)
        out["perplexity"] = math.exp(-mean_ll)
        out["perplexity_stderr"] = out["perplexity"] * _stderr(lls)
    if "acc" in spec.metrics:
        out.update(_means({"acc": [1.0 if s.is_greedy else 0.0 for s in scored]}))
    samples = [{"context": c, "target": t, "logprob": s.logprob, "is_greedy": s.is_greedy}
               for c, t, s in zip(contexts, targets, scored)]
    return out, samples


def _perplexity(model, tokenizer, spec, docs, contexts, batch_size, bar):
    window = lm.context_window(model)
    prefix = lm.prefix_token_id(tokenizer)
    texts = [render(spec, "prompt", spec.prompt, doc) for doc in docs]
    requests, owner = [], []
    for d, text in enumerate(texts):
        # Encoded with the tokenizer's own special tokens, as lm-eval's loglikelihood_rolling does.
        for pair in lm.rolling_windows(tokenizer.encode(text), prefix, window):
            requests.append(pair)
            owner.append(d)
    scored = lm.loglikelihoods(model, requests, batch_size)
    lls = [0.0] * len(texts)
    for d, s in zip(owner, scored):
        lls[d] += s.logprob
    bar(len(texts))
    words = [float(len(re.split(r"\s+", t))) for t in texts]
    nbytes = [float(len(t.encode("utf-8"))) for t in texts]
    neg = [-x for x in lls]
    out: dict[str, float] = {}
    if "word_perplexity" in spec.metrics:
        out["word_perplexity"] = math.exp(sum(neg) / sum(words))
        out["word_perplexity_stderr"] = out["word_perplexity"] * _ratio_stderr(neg, words)
    if "byte_perplexity" in spec.metrics:
        out["byte_perplexity"] = math.exp(sum(neg) / sum(nbytes))
        out["byte_perplexity_stderr"] = out["byte_perplexity"] * _ratio_stderr(neg, nbytes)
    if "bits_per_byte" in spec.metrics:
        out["bits_per_byte"] = sum(neg) / sum(nbytes) / math.log(2)
        out["bits_per_byte_stderr"] = _ratio_stderr(neg, nbytes) / math.log(2)
    samples = [{"logprob": ll, "words": w, "bytes": b} for ll, w, b in zip(lls, words, nbytes)]
    return out, samples


def _extract(spec: TaskSpec, text: str) -> str | None:
    if spec.extract == "answer":
        return extract_answer(text)
    if spec.extract == "first_line":
        return text.strip().split("\n")[0].strip()
    return text


def _generate(model, tokenizer, spec, docs, contexts, batch_size, bar):
    g = spec.generation
    max_new = g.max_new_tokens or 256  # lm-eval's default max_gen_toks
    texts = lm.generate_until(
        model, tokenizer, contexts, g.until, max_new, batch_size, g.samples, g.temperature, g.top_p,
        g.seed, bar,
    )
    scores, samples = [], []
    for doc, ctx, outs in zip(docs, contexts, texts):
        target = target_of(spec, doc)
        if isinstance(target, int) and spec.choices is not None:
            target = choices_of(spec, doc)[target]
        gold = _extract(spec, str(target))
        answers = [_extract(spec, t) for t in outs]
        prediction = answers[0] if len(answers) == 1 else self_consistency(answers)
        scores.append(1.0 if prediction is not None and prediction == gold else 0.0)
        samples.append({"context": ctx, "generations": outs, "prediction": prediction, "target": gold})
    return _means({"exact_match": scores}), samples


