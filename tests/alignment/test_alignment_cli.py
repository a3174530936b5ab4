"""`plmkit sft`, `plmkit reward` and `plmkit dpo` from the command line on a tiny GPT-2: a few CPU steps
make the loss go down, the outputs load (the reward model in transformers as GPT2ForSequenceClassification),
and bad input stops with a one-line error."""

from __future__ import annotations

import json
import random

import pytest
import torch
import transformers
from tiny_alignment import EOS, plmkit_tokenizer

from plmkit.cli import main
from plmkit.interop.hf import load, save_hf
from plmkit.models.gpt import GPT2Config, gpt2_lm


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny GPT-2 with its tokenizer, SFT pairs and preference pairs with a learnable rule."""
    root = tmp_path_factory.mktemp("align")
    torch.manual_seed(0)
    model = gpt2_lm(GPT2Config(vocab_size=97, max_positions=64, d_model=32, num_layers=2, num_heads=2))
    save_hf(model, root / "base", tokenizer=plmkit_tokenizer())
    rng = random.Random(0)
    sft, prefs = [], []
    for _ in range(48):
        a, b = rng.randrange(1, 40), rng.randrange(1, 40)
        prompt = f"w{a} w{b}"
        sft.append({"prompt": prompt, "response": f" w{a + 40} w{b + 40}"})
        # The preferred response repeats the prompt shifted by 40; the rejected one by 50.
        prefs.append({"prompt": prompt, "chosen": f" w{a + 40} w{b + 40}",
                      "rejected": f" w{a + 50} w{b + 50}"})
    for name, rows in (("sft", sft), ("prefs", prefs)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:40]))
        (root / f"{name}_dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[40:]))
    return root


def run_cli(capsys, *args: str) -> tuple[int, str]:
    code = main([*args, "--device=cpu", "--train.progress=false"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("packing", [False, True], ids=["rows", "packed"])
def test_sft_learns_the_responses_and_writes_a_model(workdir, capsys, packing):
    out = workdir / f"sft_run_{packing}"
    code, text = run_cli(capsys, "sft", f"--pretrained={workdir / 'base'}",
                         f"--data.train_file={workdir / 'sft.jsonl'}",
                         f"--data.eval_file={workdir / 'sft_dev.jsonl'}", "--train.max_steps=40",
                         "--train.lr=3e-3", "--train.warmup_steps=0", f"--out_dir={out}",
                         f"--data.packing={str(packing).lower()}", "--data.max_length=24")
    assert code == 0, text
    report = json.loads((out / "sft_report.json").read_text())
    assert report["train_rows"] == (10 if packing else 40)  # 40 rows of 6 tokens, 4 to a packed row
    assert report["final_loss"] < 0.75 * report["first_loss"]
    assert report["eval_loss"] < report["first_loss"]
    tuned = load(out / "model")
    assert tuned.tokenizer.eos_id == EOS


def test_reward_model_ranks_held_out_pairs_and_loads_in_transformers(workdir, capsys):
    out = workdir / "rm_run"
    code, text = run_cli(capsys, "reward", f"--pretrained={workdir / 'base'}",
                         f"--data.train_file={workdir / 'prefs.jsonl'}",
                         f"--data.eval_file={workdir / 'prefs_dev.jsonl'}", "--train.max_steps=60",
                         "--train.lr=3e-3", "--data.batch_size=8", f"--out_dir={out}")
    assert code == 0, text
    report = json.loads((out / "reward_report.json").read_text())
    assert report["eval_accuracy"] >= 0.75
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert type(hf).__name__ == "GPT2ForSequenceClassification" and hf.config.num_labels == 1


LORA_IPO = ["--dpo.loss_type=ipo", "--peft.method=lora", "--peft.targets=all-linear",
            "--dpo.precompute_reference=false", "--train.max_steps=80"]


@pytest.mark.parametrize("extra", [["--train.max_steps=30"], LORA_IPO], ids=["full-sigmoid", "lora-ipo"])
def test_dpo_raises_the_implicit_reward_margin(workdir, capsys, extra):
    """The LoRA run's reference is the policy with its adapters disabled (no precomputed log-probs)."""
    out = workdir / f"dpo_run{len(extra)}"
    code, text = run_cli(capsys, "dpo", f"--pretrained={workdir / 'base'}",
                         f"--data.train_file={workdir / 'prefs.jsonl'}",
                         f"--data.eval_file={workdir / 'prefs_dev.jsonl'}", "--train.lr=3e-3",
                         "--train.warmup_steps=0", "--dpo.beta=0.5", f"--out_dir={out}", *extra)
    assert code == 0, text
    report = json.loads((out / "dpo_report.json").read_text())
    assert report["final_loss"] < 0.5 * report["first_loss"] and report["final_reward_accuracy"] == 1.0
    assert report["eval_reward_margin"] > 0
    if extra is not LORA_IPO:  # 80 LoRA steps fit the 40 training pairs but generalize less
        assert report["eval_reward_accuracy"] >= 0.75
    assert (out / "model" / "model.safetensors").is_file()


def test_bad_input_is_a_one_line_error(workdir, capsys):
    same = workdir / "same.jsonl"
    same.write_text(json.dumps({"prompt": "w1", "chosen": " w2", "rejected": " w2"}) + "\n")
    code, text = run_cli(capsys, "dpo", f"--pretrained={workdir / 'base'}", f"--data.train_file={same}")
    assert code == 2
    assert text.strip().splitlines()[-1] == f"error: {same}:1: chosen and rejected responses are identical"
    code, text = run_cli(capsys, "reward", f"--pretrained={workdir / 'base'}", f"--data.train_file={same}")
    assert code == 2 and "--data.eval_file or --data.eval_fraction is required" in text


def test_rows_longer_than_the_context_window_are_cut_to_it(workdir, capsys):
    # The tiny GPT-2 has 64 positions; a longer --data.max_length used to index past the position table.
    rows = [{"prompt": " ".join(f"w{i % 39 + 1}" for i in range(50)), "chosen": " w41 w42",
             "rejected": " w51 w52"}] * 16
    (workdir / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = workdir / "rm_long"
    code, text = run_cli(capsys, "reward", f"--pretrained={workdir / 'base'}",
                         f"--data.train_file={workdir / 'long.jsonl'}", "--data.eval_fraction=0.25",
                         "--data.max_length=200", "--data.batch_size=4", "--train.max_steps=2",
                         f"--out_dir={out}")
    assert code == 0, text
    assert "--data.max_length=200 is longer than the model's context window; rows are cut to 64" in text
