"""Constitutional AI, RL stage (RL-CAI / RLAIF): a feedback model labels response pairs against principles.

The feedback model reads each conversation, a sampled comparison principle and the two responses as a
multiple choice "(A) / (B)"; the normalized probabilities of the two options are a soft label, averaged over
`--num_principles` principles and, by default, over both orders of the responses (position bias). With
`--cot` it first writes its reasoning, and the label is clamped to 40-60 % (Bai et al. 2022, sec. 4.1). Pairs
come from the file (`responses: [a, b]`, or chosen/rejected rows, which are relabelled) or are sampled from
`--policy`. The output is preference JSONL with `p_chosen`, which `plmkit reward` and `plmkit dpo` read.

    plmkit cai label --model=runs/feedback/hf --policy=runs/cai_sft/hf --prompts=red_team.jsonl \\
        --principles_dir=data/constitutional_ai/prompts --out=runs/cai/preferences.jsonl
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from plmkit.errors import ConfigError, DataError
from plmkit.training.runtime import DEVICE_HELP


@dataclass
class Config:
    model: str = field(default="", metadata={"help": "feedback model checkpoint (a causal LM)"})
    policy: str = field(default="", metadata={"help": "model that samples the two responses ('': --model)"})
    prompts: str = field(
        default="", metadata={"help": "JSONL: prompt [+ responses: [a, b]], or preference rows"}
    )
    out: str = field(default="", metadata={"help": "output preference JSONL with p_chosen"})
    principles_dir: str = field(default="", metadata={"help": "folder with the released principle files"})
    comparisons: str = field(default="", metadata={"help": "comparison principles file (JSON/YAML list)"})
    comparison_fewshot: str = field(default="", metadata={"help": "worked multiple-choice comparisons file"})
    cot_fewshot: str = field(default="", metadata={"help": "worked chain-of-thought comparisons file"})
    num_principles: int = field(default=4, metadata={"help": "principles each label is averaged over"})
    num_fewshot: int = field(default=1, metadata={"help": "worked comparisons before each question"})
    cot: bool = field(default=False, metadata={"help": "reason step by step before the label"})
    cot_clamp: bool = field(default=True, metadata={"help": "with --cot, clamp labels to [0.4, 0.6]"})
    both_orders: bool = field(default=True, metadata={"help": "average over both orders of the pair"})
    max_new_tokens: int = field(default=64, metadata={"help": "longest sampled response or reasoning"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (1.0: off)"})
    batch_size: int = field(default=8, metadata={"help": "texts scored or generated together"})
    seed: int = field(default=0, metadata={"help": "seed of the principle draws and the sampling"})
    allow_pickle: bool = field(default=False, metadata={"help": "allow a pickle .bin checkpoint (runs code)"})
    device: str = field(default="auto", metadata={"help": "where to run the models: " + DEVICE_HELP})


def run(cfg: Config) -> dict:

    from plmkit.alignment.constitution import (
        RESPONSE_STOPS,
        FeedbackOptions,
        SamplingOptions,
        ai_feedback,
        as_transcript,
        complete,
        load_constitution,
        option_ids,
        preference_records,
        read_cai_input,
        seeded_generator,
    )
    from plmkit.interop.hf import load
    from plmkit.io import atomic_file
    from plmkit.training.runtime import resolve_device

    for key in ("model", "prompts", "out"):
        if not getattr(cfg, key):
            raise ConfigError(f"--{key} is required")
    constitution = load_constitution(
        cfg.principles_dir or None,
        comparisons=cfg.comparisons or None,
        comparison_fewshot=cfg.comparison_fewshot or None,
        cot_fewshot=cfg.cot_fewshot or None,
    )
    data = read_cai_input(cfg.prompts)
    device = resolve_device(cfg.device)
    feedback = load(cfg.model, allow_pickle=cfg.allow_pickle)
    feedback.model.to(device)
    tokenizer = feedback.require_tokenizer()
    option_ids(tokenizer)  # before sampling anything: a tokenizer without the options cannot label
    sampling = SamplingOptions(cfg.max_new_tokens, True, cfg.temperature, 0, cfg.top_p, cfg.batch_size)
    pairs = data.pairs
    if pairs is None:
        policy = load(cfg.policy, allow_pickle=cfg.allow_pickle) if cfg.policy else feedback
        policy.model.to(device)
        texts = [as_transcript(p) for p in data.prompts for _ in range(2)]
        generator = seeded_generator(policy.model, cfg.seed)
        sampled = complete(
            policy.model, policy.require_tokenizer(), texts, sampling, RESPONSE_STOPS, generator
        )
        pairs = [(sampled[2 * i], sampled[2 * i + 1]) for i in range(len(data.prompts))]
    # Two equal responses carry no preference, and the reward model and DPO refuse such pairs.
    keep = [i for i, (a, b) in enumerate(pairs) if a.strip() != b.strip()]
    skipped = len(pairs) - len(keep)
    prompts = [data.prompts[i] for i in keep]
    pairs = [pairs[i] for i in keep]
    file_labels = None if data.labels is None else [data.labels[i] for i in keep]
    if not pairs:
        raise DataError(f"{cfg.prompts}: every pair holds two equal responses; nothing to label")
    options = FeedbackOptions(
        num_principles=cfg.num_principles,
        num_fewshot=cfg.num_fewshot,
        cot=cfg.cot,
        cot_clamp=(0.4, 0.6) if cfg.cot_clamp else None,
        both_orders=cfg.both_orders,
        sampling=sampling,
    )
    labels = ai_feedback(
        feedback.model, tokenizer, prompts, pairs, constitution, options=options, seed=cfg.seed
    )
    records = preference_records(prompts, pairs, labels)
    with atomic_file(cfg.out) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    result = {
        "out": cfg.out,
        "pairs": len(records),
        "skipped_equal_pairs": skipped,
        "mean_p_chosen": sum(r["p_chosen"] for r in records) / len(records),
    }
    if file_labels is not None:
        # agreement with the file's own labels: the AI prefers the response the file calls chosen
        agree = [(label["p_first"] >= 0.5) == (p >= 0.5) for label, p in zip(labels, file_labels)]
        result["agreement_with_file_labels"] = sum(agree) / len(agree)
    return result
