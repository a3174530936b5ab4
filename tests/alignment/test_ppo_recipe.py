"""`plmkit ppo` from the command line on a tiny character GPT and the world's dialogue prompts."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

import plmkit
from plmkit import cli
from plmkit.data.tokenizer import CharTokenizer
from plmkit.errors import DataError
from plmkit.recipes.ppo import read_prompts, world_judge
from plmkit.world import World, judge
from plmkit.world.tasks import make_dialogue

torch.set_num_threads(1)


def world_files(tmp_path: Path) -> tuple[Path, Path]:
    rows = make_dialogue(World(seed=0), 12, random.Random(0))
    prompts = tmp_path / "dialogue.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    chars = sorted(set("".join(r["prompt"] + r["chosen"] + r["rejected"] for r in rows)))
    tok = CharTokenizer(chars, {"eos": "</s>"})
    torch.manual_seed(0)
    from plmkit.models.gpt import GPT2Config, gpt2_lm

    model = gpt2_lm(GPT2Config(vocab_size=tok.vocab_size, max_positions=64, d_model=16, num_layers=1,
                               num_heads=2))
    policy = tmp_path / "policy"
    plmkit.save_hf(model, policy, tokenizer=tok)
    return policy, prompts


SMALL = ["--reward=world_judge", "--ppo.steps=2", "--ppo.batch_size=4", "--ppo.minibatch_size=2",
         "--ppo.epochs=1", "--ppo.max_new_tokens=6", "--ppo.lr=1e-3"]


def test_ppo_command_trains_and_writes_everything(tmp_path):
    policy, prompts = world_files(tmp_path)
    out = tmp_path / "run"
    assert cli.main(["ppo", f"--policy={policy}", f"--prompts={prompts}", f"--out_dir={out}", *SMALL]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0.0 <= r["reward"] <= 3.0 for r in rows)
    report = json.loads((out / "ppo_report.json").read_text())
    assert report["steps"] == 2 and report["last"] == rows[-1]
    before, after = plmkit.load(policy).model, plmkit.load(out / "model").model
    changed = [k for k, v in before.state_dict().items() if not torch.equal(v, after.state_dict()[k])]
    assert changed  # the saved policy is the trained one
    assert (out / "step-2" / "manifest.json").is_file()


def test_ppo_command_resumes_a_run(tmp_path):
    policy, prompts = world_files(tmp_path)
    out = tmp_path / "run"
    argv = ["ppo", f"--policy={policy}", f"--prompts={prompts}", f"--out_dir={out}", *SMALL]
    assert cli.main(argv) == 0
    assert cli.main(argv + ["--ppo.steps=3", "--ppo.resume"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert cli.main(argv) == 2  # a used out_dir without --ppo.resume is refused


def test_ppo_command_with_lora_saves_the_adapter(tmp_path):
    policy, prompts = world_files(tmp_path)
    out = tmp_path / "run"
    argv = ["ppo", f"--policy={policy}", f"--prompts={prompts}", f"--out_dir={out}", "--peft", "lora",
            "--peft.r=2", *SMALL]
    assert cli.main(argv) == 0
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert not (out / "model").exists()


def test_world_judge_reward_is_the_world_judge():
    world = World(seed=0)
    rows = make_dialogue(world, 4, random.Random(1))
    prompts = [r["prompt"] for r in rows] * 2
    responses = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
    assert world_judge(0)(prompts, responses) == [judge(world, p, r) for p, r in zip(prompts, responses)]


def test_bad_command_lines(tmp_path, capsys):
    policy, prompts = world_files(tmp_path)
    base = ["ppo", f"--policy={policy}", f"--prompts={prompts}", f"--out_dir={tmp_path / 'o'}"]
    cases = [
        (base, "give exactly one of --reward_model (a directory) or --reward (a built-in)"),
        (base + ["--reward=judge"], "--reward='judge' is not one of world_judge"),
        (base + ["--reward=world_judge", "--critic=reward_model"],
         "--critic=reward_model needs --reward_model"),
        (base + ["--reward=world_judge", "--peft", "prefix"], "PPO trains full weights or a lora adapter"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2
        assert message in capsys.readouterr().err


def test_prompts_file_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi"}\n{"question": "no prompt"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: expected a non-empty string field 'prompt'"):
        read_prompts(bad)
    assert read_prompts(bad, limit=1) == ["hi"]


def test_ppo_command_with_the_reward_command_s_model_as_reward_and_critic(tmp_path):
    """`plmkit reward`'s export (a GPT2ForSequenceClassification checkpoint) scores the policy's tokens and
    starts the critic."""
    policy, prompts = world_files(tmp_path)
    rows = make_dialogue(World(seed=0), 12, random.Random(0))
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rm_dir = tmp_path / "rm"
    assert cli.main(["reward", f"--pretrained={policy}", f"--data.train_file={prefs}", "--train.max_steps=2",
                     "--data.eval_fraction=0.25", "--data.max_length=64",
                     "--device=cpu", "--train.progress=false", f"--out_dir={rm_dir}"]) == 0
    out = tmp_path / "run"
    argv = ["ppo", f"--policy={policy}", f"--prompts={prompts}", f"--out_dir={out}",
            f"--reward_model={rm_dir / 'model'}", "--critic=reward_model",
            *[a for a in SMALL if not a.startswith("--reward=")]]
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rm = plmkit.load(rm_dir / "model").model
    assert type(rm.head).__name__ == "ScalarHead"
    assert len(rows) == 2 and all(math.isfinite(r["reward"]) for r in rows)
