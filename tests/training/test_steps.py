"""The shared step functions: each returns the summed loss over the right targets, and the recipes and the
tour run these very functions (one home, so a fix reaches both)."""

import torch
import torch.nn.functional as F

from plmkit.models.bert import BertConfig, BertModel
from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.models.heads import SequenceClassificationHead, TaskModel, TokenClassificationHead
from plmkit.objectives.clm import causal_lm_loss
from plmkit.training.steps import classification_step, clm_step, tagging_step

torch.set_num_threads(1)


def _encoder(head: torch.nn.Module) -> TaskModel:
    cfg = BertConfig(vocab_size=40, d_model=16, num_layers=1, num_heads=2, max_positions=16, dropout=0.0,
                     attention_dropout=0.0)
    return TaskModel(BertModel(cfg), head).eval()


def test_clm_step_is_the_summed_next_token_loss_over_real_targets() -> None:
    torch.manual_seed(0)
    model = gpt2_lm(GPT2Config(vocab_size=50, d_model=16, num_layers=1, num_heads=2, max_positions=16)).eval()
    ids = torch.randint(0, 50, (2, 9))
    labels = ids[:, 1:].clone()
    labels[1, -3:] = -100
    batch = {"input_ids": ids[:, :-1], "labels": labels}
    out = clm_step(model, batch)
    expected, n = causal_lm_loss(model(batch["input_ids"]), labels)
    assert int(out.num_targets) == int(n) == 13
    torch.testing.assert_close(out.loss_sum, expected, rtol=1e-5, atol=1e-5)


def test_classification_and_tagging_steps_sum_cross_entropy_over_labelled_targets() -> None:
    torch.manual_seed(0)
    ids = torch.randint(5, 40, (3, 7))
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    model = _encoder(SequenceClassificationHead(16, 4, dropout=0.0))
    labels = torch.tensor([0, 3, 1])
    out = classification_step(model, {"input_ids": ids, "attention_mask": mask, "labels": labels})
    logits = model(ids, mask)
    assert out.num_targets == 3
    torch.testing.assert_close(out.loss_sum, F.cross_entropy(logits, labels, reduction="mean") * 3)

    model = _encoder(TokenClassificationHead(16, 5, dropout=0.0))
    tags = torch.randint(0, 5, (3, 7))
    tags[:, 0] = -100
    tags[2, 5:] = -100
    out = tagging_step(model, {"input_ids": ids, "attention_mask": mask, "labels": tags})
    logits = model(ids, mask)
    keep = tags != -100
    assert out.num_targets == int(keep.sum()) == 16
    torch.testing.assert_close(out.loss_sum, F.cross_entropy(logits[keep], tags[keep], reduction="sum"))


def test_recipes_and_tour_train_with_these_functions() -> None:
    import plmkit.recipes.finetune as finetune
    import plmkit.recipes.pretrain as pretrain
    import plmkit.tour.common as tour_common
    import plmkit.tour.transfer as tour_transfer

    assert pretrain.clm_step is tour_common.clm_step is clm_step
    assert finetune.TASKS["classification"].step is tour_common.classification_step is classification_step
    assert finetune.TASKS["ner"].step is tour_transfer.tagging_step is tagging_step
