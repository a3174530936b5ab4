"""Parity with transformers for BERT, RoBERTa, ALBERT and DistilBERT, both directions, with padding.

HF tiny random model -> save_pretrained (safetensors) -> plmkit.load -> same outputs; and plmkit model ->
plmkit.save_hf -> transformers from_pretrained -> same outputs.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tr

import plmkit
from plmkit.errors import CheckpointError
from plmkit.interop.bert import build_model, config_from_hf
from plmkit.models.bert import PreTrainingLogits
from plmkit.models.heads import SequenceClassificationHead, SpanLogits, TaskModel

TOL = 1e-4
COMMON = dict(vocab_size=60, max_position_embeddings=40, pad_token_id=1)
CONFIGS = {
    "bert": lambda: tr.BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=24, **COMMON),
    "roberta": lambda: tr.RobertaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=24, type_vocab_size=1, **COMMON),
    # Three depth steps over two groups of two blocks: exercises the shared-group indexing.
    "albert": lambda: tr.AlbertConfig(embedding_size=8, hidden_size=16, num_hidden_layers=3,
                                      num_attention_heads=4, intermediate_size=24, num_hidden_groups=2,
                                      inner_group_num=2, **COMMON),
    "distilbert": lambda: tr.DistilBertConfig(dim=16, n_layers=2, n_heads=4, hidden_dim=24, **COMMON),
}
PREFIX = {"bert": "Bert", "roberta": "Roberta", "albert": "Albert", "distilbert": "DistilBert"}
KINDS = ["Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification",
         "ForQuestionAnswering"]
CASES = [(f, k) for f in CONFIGS for k in KINDS] + [("bert", "ForPreTraining"), ("albert", "ForPreTraining")]


def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 60, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0  # right padding
    mask[2, 4:] = 0
    ids[mask == 0] = 1  # the pad id
    return {"input_ids": ids, "attention_mask": mask}


def hf_outputs(model: torch.nn.Module, kind: str, batch: dict) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(**batch)
    if kind == "Model":
        return [out.last_hidden_state]
    if kind == "ForQuestionAnswering":
        return [out.start_logits, out.end_logits]
    if kind == "ForPreTraining":
        pair = out.seq_relationship_logits if hasattr(out, "seq_relationship_logits") else out.sop_logits
        return [out.prediction_logits, pair]
    return [out.logits]


def plmkit_outputs(model: torch.nn.Module, batch: dict) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(**batch)
    if isinstance(out, SpanLogits):
        return [out.start_logits, out.end_logits]
    if isinstance(out, PreTrainingLogits):
        return [out.mlm_logits, out.pair_logits]
    return [out]


def assert_close(ours: list[torch.Tensor], ref: list[torch.Tensor], mask: torch.Tensor) -> None:
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        if a.dim() >= 2 and a.shape[:2] == mask.shape:  # per-token outputs: compare real tokens
            a, b = a[mask.bool()], b[mask.bool()]
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


@pytest.mark.parametrize(("family", "kind"), CASES)
def test_load_hf_checkpoint(tmp_path, family, kind):
    torch.manual_seed(0)
    ref = getattr(tr, PREFIX[family] + kind)(CONFIGS[family]()).eval()
    ref.save_pretrained(tmp_path, safe_serialization=True)
    model = plmkit.load(tmp_path).model
    assert (kind == "Model") != isinstance(model, TaskModel)
    batch = inputs()
    assert_close(plmkit_outputs(model, batch), hf_outputs(ref, kind, batch), batch["attention_mask"])


@pytest.mark.parametrize(("family", "kind"), CASES)
def test_save_hf_loads_in_transformers(tmp_path, family, kind):
    torch.manual_seed(1)
    hf_cfg = CONFIGS[family]().to_dict()
    hf_cfg["num_labels"] = 3
    hf_cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(3)}
    cfg = config_from_hf(hf_cfg)
    head_kind = {"Model": "bare", "ForMaskedLM": "mlm", "ForPreTraining": "pretraining",
                 "ForSequenceClassification": "classification", "ForTokenClassification": "token",
                 "ForQuestionAnswering": "qa"}[kind]
    model = build_model(cfg, head_kind, hf_cfg).eval()
    with torch.no_grad():  # untrained biases and norms are zero/one: perturb them so the test can fail
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    plmkit.save_hf(model, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["architectures"] == [PREFIX[family] + kind]
    ref = getattr(tr, PREFIX[family] + kind).from_pretrained(tmp_path).eval()
    batch = inputs()
    assert_close(plmkit_outputs(model, batch), hf_outputs(ref, kind, batch), batch["attention_mask"])


def test_token_type_ids_match_transformers(tmp_path):
    torch.manual_seed(0)
    ref = tr.BertModel(CONFIGS["bert"]()).eval()
    ref.save_pretrained(tmp_path)
    model = plmkit.load(tmp_path).model
    batch = inputs()
    batch["token_type_ids"] = (torch.arange(9) >= 4).long().expand(3, 9)
    assert_close(plmkit_outputs(model, batch), hf_outputs(ref, "Model", batch), batch["attention_mask"])


def test_roberta_positions_start_after_padding_index():
    model = build_model(config_from_hf(CONFIGS["roberta"]().to_dict()), "bare")
    ids = torch.tensor([[0, 5, 6, 2, 1, 1]])
    positions = model.default_positions(ids, None, 1, 6, ids.device)
    assert positions.tolist() == [[2, 3, 4, 5, 1, 1]]


def test_unknown_architecture_is_named(tmp_path):
    torch.manual_seed(0)
    tr.BertModel(CONFIGS["bert"]()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["architectures"] = ["BertForNextSentencePrediction"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError,
                       match="architecture 'BertForNextSentencePrediction' is not supported"):
        plmkit.load(tmp_path)


def test_shape_mismatch_names_the_key(tmp_path):
    torch.manual_seed(0)
    tr.BertModel(CONFIGS["bert"]()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    key = r"'encoder\.layer\.0\.intermediate\.dense\.(weight|bias)'"
    with pytest.raises(CheckpointError, match=f"weight {key} has shape"):
        plmkit.load(tmp_path)


def test_mean_pooling_head_has_no_hf_class(tmp_path):
    cfg = config_from_hf(CONFIGS["bert"]().to_dict())
    model = TaskModel(build_model(cfg, "bare"), SequenceClassificationHead(16, 2, pooling="mean"))
    with pytest.raises(CheckpointError, match="pooling='mean'"):
        plmkit.save_hf(model, tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()
