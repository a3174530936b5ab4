"""Train a policy with GRPO against rule-based rewards (RL from verifiable rewards, DeepSeekMath 2024).

Loads `--policy` (a Hugging Face or plmkit causal LM), reads the prompts and reference answers of
`--prompts` (JSONL; `--prompt_field` and `--answer_field`, GSM8K's `question` / `answer` "... #### 72"
work as they are), formats each prompt with `--template`, and runs `plmkit.alignment.grpo.train_grpo`:
`--grpo.group_size` samples per prompt, rewards from `--rewards` (answer: the final answer, read with
`plmkit.prompting.extract_answer`, equals the reference; format: the response ends in a "#### N" line),
group-normalized advantages, clipped ratio and a k3 KL to the starting policy. `--grpo.loss_type=dr_grpo
--no-grpo.scale_rewards` is Dr. GRPO. With `--peft lora` only the adapters train and the reference is the
base with adapters disabled.

    plmkit grpo --policy=runs/sft/model --prompts=data/gsm8k/train.jsonl --prompt_field=question \\
        --template="Question: {prompt}\\nAnswer:" --rewards=answer,format --out_dir=runs/grpo

Writes into `--out_dir`: `metrics.jsonl` (per step: reward and each reward's mean, reward_std,
zero_std_groups, loss, kl, clip_fraction, response_length, ...), `step-N/` checkpoints (`--grpo.resume`
continues a killed run), `model/` (a Hugging Face checkpoint; with an adapter `adapter/` instead) and
`grpo_report.json`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plmkit.alignment.grpo import GRPOConfig, answer_reward, format_reward
from plmkit.alignment.ppo import RewardFn
from plmkit.errors import ConfigError, DataError
from plmkit.peft import PeftOptions
from plmkit.recipes.ppo import finish_run
from plmkit.training.runtime import DEVICE_HELP, resolve_device

# The built-in rewards (`--rewards`): name -> builder of a reward_fn from the prompts' reference answers.
REWARDS: dict[str, Callable[[dict[str, str]], RewardFn]] = {
    "answer": answer_reward,
    "format": lambda references: format_reward,
}


@dataclass
class Config:
    policy: str = field(default="", metadata={"help": "the policy directory (required)"})
    prompts: str = field(
        default="", metadata={"help": "JSONL with a prompt and a reference answer (required)"}
    )
    prompt_field: str = field(default="prompt", metadata={"help": "the prompt's field (GSM8K: question)"})
    answer_field: str = field(default="answer", metadata={"help": "the reference answer's field"})
    template: str = field(default="{prompt}", metadata={"help": "text around {prompt} (\\n: a newline)"})
    rewards: list[str] = field(default_factory=lambda: ["answer"], metadata={"help": "of: answer, format"})
    reward_weights: list[float] = field(default_factory=list, metadata={"help": "one per reward (default 1)"})
    max_prompts: int = field(default=0, metadata={"help": "use the first N prompts (0: all)"})
    peft: PeftOptions = field(default_factory=PeftOptions, metadata={"help": "train an adapter instead"})
    grpo: GRPOConfig = field(default_factory=GRPOConfig, metadata={"help": "GRPO settings"})
    out_dir: str = field(default="", metadata={"help": "output directory (required)"})
    device: str = field(default="auto", metadata={"help": "where to run the policy: " + DEVICE_HELP})

    def __post_init__(self) -> None:
        for key in ("policy", "prompts", "out_dir"):
            if not getattr(self, key):
                raise ConfigError(f"--{key} is required")
        unknown = [name for name in self.rewards if name not in REWARDS]
        if not self.rewards or unknown:
            raise ConfigError(f"--rewards={','.join(self.rewards)}: choose from {', '.join(REWARDS)}")
        if self.reward_weights and len(self.reward_weights) != len(self.rewards):
            raise ConfigError(
                f"{len(self.reward_weights)} --reward_weights for {len(self.rewards)} --rewards"
            )
        if "{prompt}" not in self.template:
            raise ConfigError("--template must contain {prompt}")
        if self.grpo.out_dir and Path(self.grpo.out_dir) != Path(self.out_dir):
            raise ConfigError("--grpo.out_dir is set by --out_dir; leave it out")
        if self.peft.method and self.peft.method != "lora":
            raise ConfigError(f"--peft {self.peft.method}: GRPO trains full weights or a lora adapter")


def read_problems(cfg: Config) -> tuple[list[str], dict[str, str]]:
    """Formatted prompts and prompt -> reference answer, from the JSONL rows."""
    from plmkit.data.readers import _rows

    path = Path(cfg.prompts)
    prompts: list[str] = []
    references: dict[str, str] = {}
    for number, row in _rows(path):
        prompt, answer = row.get(cfg.prompt_field), row.get(cfg.answer_field)
        if not isinstance(prompt, str) or not prompt:
            raise DataError(f"{path}:{number}: expected a non-empty string field {cfg.prompt_field!r}")
        if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
            raise DataError(f"{path}:{number}: expected a reference answer in field {cfg.answer_field!r}")
        # A shell passes "\n" through as two characters; in a template it can only mean a line break.
        text = cfg.template.replace("\\n", "\n").replace("{prompt}", prompt)
        prompts.append(text)
        references[text] = str(answer)
        if cfg.max_prompts and len(prompts) >= cfg.max_prompts:
            break
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts, references


def run(cfg: Config) -> dict[str, Any]:
    from plmkit.alignment.grpo import combine_rewards, train_grpo
    from plmkit.interop.hf import load

    loaded = load(cfg.policy)
    tokenizer = loaded.require_tokenizer()
    policy = loaded.model
    prompts, references = read_problems(cfg)
    weights = dict(zip(cfg.rewards, cfg.reward_weights)) if cfg.reward_weights else None
    reward = combine_rewards({name: REWARDS[name](references) for name in cfg.rewards}, weights)
    if cfg.peft.method:
        from plmkit.peft import apply_peft

        policy = apply_peft(policy, cfg.peft)
    policy.to(resolve_device(cfg.device))
    grpo_cfg = copy.copy(cfg.grpo)
    grpo_cfg.out_dir = cfg.out_dir
    grpo_cfg.__post_init__()
    result = train_grpo(policy, prompts, reward, grpo_cfg, tokenizer=tokenizer)
    return finish_run(policy, result, len(prompts), cfg.out_dir, tokenizer, cfg.peft.method,
                      "grpo_report.json")
