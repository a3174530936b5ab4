"""Write a checkpoint's predictions on a file, one JSON line per example.

Takes the options of `plmkit eval`: with --task, each line holds the predicted label and the label
probabilities (classification), the tags and entity spans (ner), the answer text and its character
offsets (qa) or the generated text (text2text), next to the gold value; with --tasks, every prompt of
the in-context tasks with its choices' log-probabilities or generations and the prediction.

    plmkit predict --model=runs/sst2/model --task=classification --data.eval_file=test.tsv --out=pred.jsonl
    plmkit predict --model=runs/gpt/hf --tasks=sst2_4shot --limit=20 --out=pred.jsonl
"""

from __future__ import annotations

from dataclasses import dataclass, field

from plmkit.errors import ConfigError
from plmkit.recipes import eval as eval_recipe


@dataclass
class Config(eval_recipe.Config):
    out: str = field(default="", metadata={"help": "JSONL file to write, one line per example"})


def run(cfg: Config) -> dict:
    if not cfg.out:
        raise ConfigError("predict needs --out=FILE.jsonl")
    if cfg.perplexity:
        raise ConfigError("predict writes per-example predictions: use --task or --tasks, not --perplexity")
    eval_recipe.check(cfg, "predict")
    pre = eval_recipe.load_model(cfg)
    if cfg.task:
        from plmkit.evaluation.heldout import prepare

        where = eval_recipe.cfg_path(pre)
        task, labels, d, records = prepare(cfg.task, pre.model, pre.hf_config, cfg.data, where)
        rows = task.predict(pre.model, pre.require_tokenizer(), records, labels, d)
    else:
        rows = eval_recipe.sample_rows(eval_recipe.in_context(cfg, pre, log_samples=True)["samples"])
    eval_recipe.write_jsonl(cfg.out, rows)
    return {"predictions": len(rows), "out": cfg.out}
