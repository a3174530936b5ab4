"""Direct Preference Optimization of a causal LM on preference pairs (DPO, robust/conservative DPO, IPO).

Loads the policy `--pretrained` (usually the output of `plmkit sft`) and preference JSONL
(`prompt`/`chosen`/`rejected`, optional soft label `p_chosen`, or HH-RLHF transcripts), and trains
`plmkit.alignment.dpo` losses through the one training loop. The frozen reference is `--reference`
(default: the starting policy itself). With `--dpo.precompute_reference` (default) the reference
log-probs of every pair are computed once before training, so no second model stays in memory and each
step runs one forward pass; otherwise a LoRA policy (`--peft.method=lora`) uses itself with adapters
disabled as the reference, and a fully trained one keeps a frozen copy.

    plmkit dpo --pretrained=runs/sft/model --data.train_file=prefs.jsonl --dpo.beta=0.1 \\
        --train.max_steps=200 --out_dir=runs/dpo
    plmkit dpo --pretrained=runs/sft/model --data.train_file=prefs.jsonl --dpo.loss_type=ipo \\
        --peft.method=lora --dpo.precompute_reference=false --out_dir=runs/dpo-lora

Writes into `--out_dir`: `model/` (a Hugging Face checkpoint; LoRA is merged in), `adapter/` for a PEFT
run, the loop's metrics and checkpoints under `train/`, and `dpo_report.json` (held-out implicit-reward
accuracy and margin).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.alignment.dpo import LOSS_TYPES
from plmkit.peft import PeftOptions
from plmkit.recipes.sft import limit, pad_id, require, train_dir
from plmkit.training import TrainConfig
from plmkit.training.runtime import DEVICE_HELP


@dataclass
class DPOOptions:
    beta: float = field(default=0.1, metadata={"help": "strength of the pull towards the reference (β)"})
    loss_type: str = field(default="sigmoid", metadata={"help": "loss: " + ", ".join(LOSS_TYPES)})
    label_smoothing: float = field(
        default=0.0, metadata={"help": "share of labels assumed flipped (sigmoid: conservative, robust)"}
    )
    precompute_reference: bool = field(
        default=True, metadata={"help": "compute the reference log-probs once before training"}
    )


@dataclass
class DataConfig:
    train_file: str = field(default="", metadata={"help": "preference JSONL (required)"})
    eval_file: str = field(default="", metadata={"help": "held-out preference JSONL ('': none)"})
    max_length: int = field(default=512, metadata={"help": "tokens per prompt + response (+ EOS)"})
    max_prompt_length: int = field(
        default=0, metadata={"help": "keep only the last N prompt tokens (0: all)"}
    )
    batch_size: int = field(default=4, metadata={"help": "pairs per micro-batch"})
    eval_batch_size: int = field(default=16, metadata={"help": "pairs per evaluation batch"})
    max_train_examples: int = field(default=0, metadata={"help": "use the first N training pairs (0: all)"})
    chat_template: bool = field(
        default=True, metadata={"help": "render messages with the checkpoint's chat template if it has one"}
    )


def _default_train() -> TrainConfig:
    return TrainConfig(max_steps=200, lr=5e-7, schedule="linear", min_lr_ratio=0.0, warmup_steps=10,
                       weight_decay=0.0)


@dataclass
class Config:
    pretrained: str = field(default="", metadata={"help": "policy directory, usually plmkit sft's model/"})
    reference: str = field(
        default="", metadata={"help": "reference model directory ('': the policy's start)"}
    )
    out_dir: str = field(
        default="", metadata={"help": "where model/, adapter/ and the report go ('': nowhere)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the data order"})
    device: str = field(default="auto", metadata={"help": "where to train: " + DEVICE_HELP})
    dpo: DPOOptions = field(default_factory=DPOOptions, metadata={"help": "the preference loss"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "preference data"})
    train: TrainConfig = field(default_factory=_default_train, metadata={"help": "training loop"})
    peft: PeftOptions = field(
        default_factory=PeftOptions, metadata={"help": "parameter-efficient fine-tuning (method '': full)"}
    )


@torch.no_grad()
def add_reference_logprobs(reference: nn.Module, rows: list[dict], pad: int, batch_size: int) -> None:
    """Store each row's reference log-probs (`ref_chosen_logps`, `ref_rejected_logps`) in place."""
    from plmkit.alignment.dpo import pair_logprobs
    from plmkit.alignment.records import collate_preferences

    was_training = reference.training
    reference.eval()
    device = next(reference.parameters()).device
    for start in range(0, len(rows), batch_size):
        part = rows[start: start + batch_size]
        batch = {k: v.to(device) for k, v in collate_preferences(part, pad).items()}
        chosen, rejected = pair_logprobs(reference, batch)
        for row, c, r in zip(part, chosen.tolist(), rejected.tolist()):
            row["ref_chosen_logps"], row["ref_rejected_logps"] = c, r
    reference.train(was_training)


@torch.no_grad()
def evaluate_preferences(
    model: nn.Module, rows: list[dict], pad: int, batch_size: int, options: DPOOptions
) -> dict[str, float]:
    """Held-out DPO loss and implicit-reward accuracy/margin (rows carry reference log-probs)."""
    from plmkit.alignment.dpo import pair_logprobs, preference_loss, response_lengths
    from plmkit.alignment.records import collate_preferences

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    losses, chosen_r, rejected_r = [], [], []
    for start in range(0, len(rows), batch_size):
        batch = collate_preferences(rows[start: start + batch_size], pad)
        batch = {k: v.to(device) for k, v in batch.items()}
        chosen, rejected = pair_logprobs(model, batch)
        ref_c, ref_r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        lengths = response_lengths(batch)
        losses.append(preference_loss(options.loss_type, chosen, rejected, ref_c, ref_r, options.beta,
                                      label_smoothing=options.label_smoothing, p_chosen=batch["p_chosen"],
                                      chosen_lengths=lengths[0], rejected_lengths=lengths[1]))
        chosen_r.append(options.beta * (chosen - ref_c))
        rejected_r.append(options.beta * (rejected - ref_r))
    model.train(was_training)
    chosen_r, rejected_r = torch.cat(chosen_r), torch.cat(rejected_r)
    return {
        "eval_loss": torch.cat(losses).mean().item(),
        "eval_reward_accuracy": (chosen_r > rejected_r).float().mean().item(),
        "eval_reward_margin": (chosen_r - rejected_r).mean().item(),
    }


def run(cfg: Config) -> dict:
    from plmkit.alignment.dpo import PreferenceConfig, preference_step
    from plmkit.alignment.records import collate_preferences, encode_preferences, read_preferences
    from plmkit.data.batches import ShuffledBatches
    from plmkit.interop.hf import load
    from plmkit.io import write_json
    from plmkit.peft import apply_peft, trainable_report
    from plmkit.recipes.sft import chat_template, fit_length, save_policy
    from plmkit.training import distributed, train

    require(cfg, "pretrained", "data.train_file")
    d, o = cfg.data, cfg.dpo
    options = PreferenceConfig(beta=o.beta, loss_type=o.loss_type, label_smoothing=o.label_smoothing)
    info = distributed.init_distributed(cfg.device)
    pretrained = load(cfg.pretrained)
    tokenizer = pretrained.require_tokenizer()
    d = replace(d, max_length=fit_length(d.max_length, pretrained.model))
    template, render = chat_template(cfg.pretrained, d.chat_template, tokenizer)
    max_prompt = d.max_prompt_length or None

    def rows_of(path: str, n: int = 0) -> list[dict]:
        pairs = limit(read_preferences(path, template, **render), n)
        return encode_preferences(tokenizer, pairs, d.max_length, max_prompt, special_tokens=template is None)

    train_rows = rows_of(d.train_file, d.max_train_examples)
    eval_rows = rows_of(d.eval_file) if d.eval_file else []
    pad = pad_id(tokenizer)
    policy = pretrained.model.to(info.device)
    reference: nn.Module | None = None
    if cfg.reference:
        reference = load(cfg.reference).model.to(info.device).eval().requires_grad_(False)
    elif o.precompute_reference or not cfg.peft.method:
        # The starting policy is the reference: before training it needs no copy at all.
        reference = policy if o.precompute_reference else copy.deepcopy(policy).eval().requires_grad_(False)
    if o.precompute_reference or eval_rows:
        scorer = reference if reference is not None else policy  # LoRA not applied yet: the base
        add_reference_logprobs(scorer, train_rows if o.precompute_reference else [], pad, d.eval_batch_size)
        add_reference_logprobs(scorer, eval_rows, pad, d.eval_batch_size)
    if o.precompute_reference:
        reference = None
    model = apply_peft(policy, cfg.peft) if cfg.peft.method else policy
    if info.is_main:
        print(trainable_report(model), flush=True)
    batches = ShuffledBatches(train_rows, lambda xs: collate_preferences(xs, pad), d.batch_size,
                              seed=cfg.seed, rank=info.rank, world_size=info.world_size)

    def eval_fn(m: nn.Module) -> dict[str, float]:
        return evaluate_preferences(m, eval_rows, pad, d.eval_batch_size, o) if eval_rows else {}

    start = time.perf_counter()
    result = train(model, preference_step(options, reference), batches, train_dir(cfg.out_dir, cfg.train),
                   eval_fn=eval_fn, tokenizer=tokenizer)
    summary: dict[str, Any] = {
        "steps": result.step,
        "loss_type": o.loss_type,
        "beta": o.beta,
        "first_loss": result.history[0]["loss"],
        "final_loss": result.history[-1]["loss"],
        "final_reward_accuracy": result.history[-1].get("rewards/accuracy"),
        "final_reward_margin": result.history[-1].get("rewards/margin"),
        "train_seconds": time.perf_counter() - start,
        "train_pairs": len(train_rows),
        "eval_pairs": len(eval_rows),
        **result.final_eval,
    }
    model = distributed.full_model(model)
    if cfg.out_dir and info.is_main:
        out = Path(cfg.out_dir)
        summary.update(save_policy(model, out, tokenizer, cfg.peft.method, cfg.pretrained))
        write_json(out / "dpo_report.json", summary)
    distributed.barrier()
    return summary
