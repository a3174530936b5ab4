"""Constitutional AI, supervised stage (SL-CAI): a model critiques and revises its own responses.

For each prompt the model samples a response, then `--rounds` times: a critique request is sampled from the
principles (seeded), the model writes a critique, then a revision, each after `--num_fewshot` worked examples
(Bai et al. 2022, sec. 3). The output is prompt/response JSONL, the response being the final revision,
with the whole chain kept beside it; `plmkit sft` trains on it. Principles: the files Anthropic released
(`--principles_dir`), or your own JSON/YAML of the same shape (`--critiques`, `--critique_fewshot`).

    plmkit cai revise --model=runs/sft/hf --prompts=red_team.jsonl --out=runs/cai/revisions.jsonl \\
        --principles_dir=data/constitutional_ai/prompts --rounds=2
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from plmkit.errors import ConfigError
from plmkit.training.runtime import DEVICE_HELP


@dataclass
class Config:
    model: str = field(
        default="", metadata={"help": "causal LM checkpoint directory (plmkit or Hugging Face)"}
    )
    prompts: str = field(
        default="", metadata={"help": "JSONL with 'prompt' (or 'messages'), or .txt, one a line"}
    )
    out: str = field(default="", metadata={"help": "output JSONL (prompt, response = final revision, chain)"})
    principles_dir: str = field(default="", metadata={"help": "folder with the released principle files"})
    critiques: str = field(default="", metadata={"help": "critique/revision principles file (JSON/YAML)"})
    critique_fewshot: str = field(default="", metadata={"help": "worked critique/revision examples file"})
    rounds: int = field(default=1, metadata={"help": "critique-revision rounds per prompt"})
    num_fewshot: int = field(default=1, metadata={"help": "worked examples before each critique"})
    max_new_tokens: int = field(default=64, metadata={"help": "longest response, critique or revision"})
    do_sample: bool = field(default=True, metadata={"help": "sample (else greedy)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_k: int = field(default=0, metadata={"help": "sample among the k most likely tokens (0: off)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (1.0: off)"})
    batch_size: int = field(default=8, metadata={"help": "texts generated together"})
    seed: int = field(default=0, metadata={"help": "seed of the principle draws and the sampling"})
    allow_pickle: bool = field(default=False, metadata={"help": "allow a pickle .bin checkpoint (runs code)"})
    device: str = field(default="auto", metadata={"help": "where to run the models: " + DEVICE_HELP})


def run(cfg: Config) -> dict:
    from plmkit.alignment.constitution import SamplingOptions, load_constitution, read_cai_input, revise
    from plmkit.interop.hf import load
    from plmkit.io import atomic_file
    from plmkit.training.runtime import resolve_device

    for key in ("model", "prompts", "out"):
        if not getattr(cfg, key):
            raise ConfigError(f"--{key} is required")
    constitution = load_constitution(
        cfg.principles_dir or None,
        critiques=cfg.critiques or None,
        critique_fewshot=cfg.critique_fewshot or None,
    )
    constitution.require("critiques")
    prompts = read_cai_input(cfg.prompts).prompts
    loaded = load(cfg.model, allow_pickle=cfg.allow_pickle)
    loaded.model.to(resolve_device(cfg.device))
    sampling = SamplingOptions(
        cfg.max_new_tokens, cfg.do_sample, cfg.temperature, cfg.top_k, cfg.top_p, cfg.batch_size
    )
    records = revise(
        loaded.model,
        loaded.require_tokenizer(),
        prompts,
        constitution,
        rounds=cfg.rounds,
        num_fewshot=cfg.num_fewshot,
        sampling=sampling,
        seed=cfg.seed,
    )
    with atomic_file(cfg.out) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    changed = sum(r["response"].strip() != r["initial_response"].strip() for r in records)
    return {"out": cfg.out, "records": len(records), "rounds": cfg.rounds, "revised": changed}
