"""Train a policy with PPO against a reward model or a built-in reward (RLHF's third stage).

Loads the supervised model `--policy` (a Hugging Face or plmkit causal LM, usually the output of
`plmkit sft`), reads the prompts of `--prompts` (JSONL with a `prompt` field; other fields are ignored, so
an SFT or preference file works), and runs `plmkit.alignment.ppo.train_ppo`: sample a response per prompt,
score it, penalize the KL to the starting policy per token, and take several epochs of clipped PPO steps.
The reward is `--reward_model` (a directory `plmkit.load` reads, scored on the policy's own tokens) or
`--reward=world_judge` (the synthetic world's hidden labeller, `plmkit.world.judge`, for the dialogue task
of `plmkit world`). With `--peft lora` only the adapters and the value head train and the reference model
is the base with adapters disabled.

    plmkit ppo --policy=runs/sft/model --prompts=world/dialogue/train.jsonl --reward=world_judge \\
        --ppo.steps=50 --ppo.lr=1e-5 --out_dir=runs/ppo

Writes into `--out_dir`: `metrics.jsonl` (per step: reward, kl, entropy, clip_fraction, approx_kl,
value_error, response_length, ...), `step-N/` checkpoints (`--ppo.resume` continues a killed run),
`model/` (the trained policy, a Hugging Face checkpoint; with an adapter `adapter/` instead) and
`ppo_report.json`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plmkit.alignment.ppo import PPOConfig
from plmkit.errors import ConfigError, DataError
from plmkit.peft import PeftOptions
from plmkit.training.runtime import DEVICE_HELP, resolve_device

CRITICS = ("shared", "reward_model")


def world_judge(seed: int) -> Callable[[list[str], list[str]], list[float]]:
    """The world's dialogue judge as a reward: 2 for a correct answer, +1 for a polite one."""
    from plmkit.world import World, judge

    world = World(seed=seed)
    return lambda prompts, responses: [judge(world, p, r) for p, r in zip(prompts, responses)]


# The built-in rewards (`--reward`): name -> builder of a reward_fn from the config.
REWARDS: dict[str, Callable[[Config], Callable[[list[str], list[str]], list[float]]]] = {
    "world_judge": lambda cfg: world_judge(cfg.world_seed),
}


@dataclass
class Config:
    policy: str = field(default="", metadata={"help": "the supervised policy directory (required)"})
    prompts: str = field(default="", metadata={"help": "JSONL file with a 'prompt' field (required)"})
    reward_model: str = field(default="", metadata={"help": "reward model directory (or --reward)"})
    reward: str = field(default="", metadata={"help": "built-in reward instead: " + ", ".join(REWARDS)})
    world_seed: int = field(default=0, metadata={"help": "world_judge: the seed of the world"})
    critic: str = field(
        default="shared",
        metadata={"help": "value function: shared (a head on the policy) or reward_model (a copy of it)"},
    )
    max_prompts: int = field(default=0, metadata={"help": "use the first N prompts (0: all)"})
    peft: PeftOptions = field(default_factory=PeftOptions, metadata={"help": "train an adapter instead"})
    ppo: PPOConfig = field(default_factory=PPOConfig, metadata={"help": "PPO settings"})
    out_dir: str = field(default="", metadata={"help": "output directory (required)"})
    device: str = field(default="auto", metadata={"help": "where to run the models: " + DEVICE_HELP})

    def __post_init__(self) -> None:
        for key in ("policy", "prompts", "out_dir"):
            if not getattr(self, key):
                raise ConfigError(f"--{key} is required")
        if bool(self.reward_model) == bool(self.reward):
            raise ConfigError("give exactly one of --reward_model (a directory) or --reward (a built-in)")
        if self.reward and self.reward not in REWARDS:
            raise ConfigError(f"--reward={self.reward!r} is not one of {', '.join(REWARDS)}")
        if self.critic not in CRITICS:
            raise ConfigError(f"--critic={self.critic!r} is not one of {', '.join(CRITICS)}")
        if self.critic == "reward_model" and not self.reward_model:
            raise ConfigError("--critic=reward_model needs --reward_model")
        if self.ppo.out_dir and Path(self.ppo.out_dir) != Path(self.out_dir):
            raise ConfigError("--ppo.out_dir is set by --out_dir; leave it out")
        if self.peft.method and self.peft.method != "lora":
            raise ConfigError(f"--peft {self.peft.method}: PPO trains full weights or a lora adapter")


def read_prompts(path: str | Path, limit: int = 0) -> list[str]:
    """The `prompt` field of every JSONL row (other fields ignored)."""
    from plmkit.data.readers import _rows

    path = Path(path)
    prompts = []
    for number, row in _rows(path):
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise DataError(f"{path}:{number}: expected a non-empty string field 'prompt'")
        prompts.append(prompt)
        if limit and len(prompts) >= limit:
            break
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def run(cfg: Config) -> dict[str, Any]:
    import torch

    from plmkit.alignment.ppo import train_ppo
    from plmkit.interop.hf import load
    from plmkit.models.heads import ScalarHead, TaskModel

    loaded = load(cfg.policy)
    tokenizer = loaded.require_tokenizer()
    policy = loaded.model
    prompts = read_prompts(cfg.prompts, cfg.max_prompts)
    reward_tokenizer = None
    if cfg.reward_model:
        reward_loaded = load(cfg.reward_model)
        reward: Any = reward_loaded.model
        reward_tokenizer = reward_loaded.tokenizer
    else:
        reward = REWARDS[cfg.reward](cfg)
    critic = None
    if cfg.critic == "reward_model":
        if not (isinstance(reward, TaskModel) and isinstance(reward.head, ScalarHead)):
            raise ConfigError(f"--critic=reward_model: {cfg.reward_model} is no decoder with a scalar head")
        critic = copy.deepcopy(reward)  # InstructGPT initializes the value function from the reward model
        critic.requires_grad_(True)
    if cfg.peft.method:
        from plmkit.peft import apply_peft

        policy = apply_peft(policy, cfg.peft)
    device = resolve_device(cfg.device)
    policy.to(device)
    if isinstance(reward, torch.nn.Module):
        reward.to(device)
    if critic is not None:
        critic.to(device)
    ppo_cfg = copy.copy(cfg.ppo)
    ppo_cfg.out_dir = cfg.out_dir
    result = train_ppo(
        policy, prompts, reward, ppo_cfg, tokenizer=tokenizer, critic=critic,
        reward_tokenizer=reward_tokenizer,
    )
    return finish_run(policy, result, len(prompts), cfg.out_dir, tokenizer, cfg.peft.method,
                      "ppo_report.json")


def finish_run(
    policy: Any, result: Any, num_prompts: int, out_dir: str, tokenizer: Any, peft_method: str, report: str
) -> dict:
    """Save an RL run's policy (adapter/ for PEFT, else model/) and its report; the command's summary.
    `result` is a PPOResult or GRPOResult (history, step, checkpoint)."""
    from plmkit.interop.hf import save_hf
    from plmkit.io import write_json

    out = Path(out_dir)
    if peft_method:
        from plmkit.peft import save_adapter

        saved = save_adapter(policy, out / "adapter")
    else:
        saved = save_hf(policy.eval(), out / "model", tokenizer=tokenizer)
    last = result.history[-1] if result.history else {}
    write_json(out / report, {
        "steps": result.step,
        "prompts": num_prompts,
        "first": result.history[0] if result.history else {},
        "last": last,
        "saved": str(saved),
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
    }, indent=1)
    return {"out_dir": str(out), "steps": result.step, "reward": last.get("reward"), "kl": last.get("kl")}
