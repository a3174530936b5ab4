"""T5 v1.0 / v1.1 against transformers on tiny random configs: logits both ways, greedy and beam search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as tr
from safetensors.torch import load_file, save_file

from plmkit.errors import CheckpointError, ConfigError
from plmkit.interop import t5 as it5
from plmkit.interop.convert import drop_tied
from plmkit.models.seq2seq_generation import generate_seq2seq
from plmkit.models.t5 import T5Config, relative_position_bucket, t5_lm

VARIANTS = {
    "v1.0": dict(feed_forward_proj="relu"),
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def hf_t5(variant: str, decoder_layers: int = 2) -> tr.T5ForConditionalGeneration:
    torch.manual_seed(0)
    cfg = tr.T5Config(
        vocab_size=99,
        d_model=32,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_decoder_layers=decoder_layers,
        num_heads=4,
        dropout_rate=0.0,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        decoder_start_token_id=0,
        **VARIANTS[variant],
    )
    return tr.T5ForConditionalGeneration(cfg).eval()


def load_plmkit(hf: tr.PreTrainedModel, tmp_path: Path) -> torch.nn.Module:
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    return it5.build_from_hf(config, load_file(str(tmp_path / "hf" / "model.safetensors"))).eval()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 99, (3, 30), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    mask[2, 5:] = 0
    return ids, mask


def cut_at_eos(tokens: torch.Tensor, eos: int, pad: int) -> torch.Tensor:
    """After a row's first EOS everything becomes pad (transformers fills with EOS when pad is 0)."""
    after = (tokens == eos).long().cumsum(-1) - (tokens == eos).long() > 0
    return tokens.masked_fill(after, pad)


@pytest.mark.parametrize("variant", ["v1.0", "v1.1"])
def test_logits_match_transformers_both_ways(variant: str, tmp_path: Path) -> None:
    hf = hf_t5(variant, decoder_layers=3)
    model = load_plmkit(hf, tmp_path)
    assert model.config.scale_decoder_outputs is (variant == "v1.0")
    assert model.config.feed_forward == ("relu" if variant == "v1.0" else "gated-gelu")
    ids, mask = batch()
    dec = torch.randint(2, 99, (3, 25), generator=torch.Generator().manual_seed(2))
    dec_mask = torch.ones_like(dec)
    dec_mask[2, 10:] = 0
    with torch.no_grad():
        want = hf(
            input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask
        ).logits
        got = model(ids, mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    real = dec_mask.bool()
    assert (got - want)[real].abs().max() < 1e-4
    # Export: plmkit -> HF layout -> transformers.from_pretrained gives the same logits.
    hf_config, state = it5.export_to_hf(model)
    out = tmp_path / "export"
    out.mkdir()
    save_file(drop_tied(model, {k: v.contiguous() for k, v in state.items()}), str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(hf_config))
    back = tr.T5ForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        again = back(
            input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask
        ).logits
    assert (again - got)[real].abs().max() < 1e-4


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """(transformers model, plmkit model) per variant, built once for the generation tests."""
    out = {}
    for variant in VARIANTS:
        hf = hf_t5(variant)
        out[variant] = (hf, load_plmkit(hf, tmp_path_factory.mktemp(variant)))
    return out


@pytest.mark.parametrize(
    ("variant", "settings"),
    [
        ("v1.0", dict(num_beams=1)),
        ("v1.1", dict(num_beams=1, no_repeat_ngram_size=2)),
        ("v1.0", dict(num_beams=3)),
        ("v1.1", dict(num_beams=4, length_penalty=0.6, no_repeat_ngram_size=2)),
        ("v1.0", dict(num_beams=3, early_stopping=True, length_penalty=2.0)),
    ],
)
def test_generation_matches_transformers(variant: str, settings: dict, pairs: dict) -> None:
    hf, model = pairs[variant]
    ids, mask = batch()
    want = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, **settings)[
        :, 1:
    ]
    got = generate_seq2seq(model, ids, mask, max_new_tokens=10, **settings)
    assert got.shape == want.shape
    assert torch.equal(cut_at_eos(got, 1, 0), cut_at_eos(want, 1, 0))


def test_cached_decoding_equals_full_recompute(pairs: dict) -> None:
    model = pairs["v1.0"][1]
    ids, mask = batch()
    new = generate_seq2seq(model, ids, mask, max_new_tokens=8, eos_token_id=-1)
    dec = torch.cat([torch.zeros(3, 1, dtype=torch.long), new], 1)
    with torch.no_grad():
        full = model(ids, mask, decoder_input_ids=dec[:, :-1])
    assert torch.equal(full.argmax(-1), new)


def test_inputs_embeds_equals_input_ids() -> None:
    torch.manual_seed(0)
    model = t5_lm(
        T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_heads=2, dropout=0.0)
    ).eval()
    ids, dec = torch.randint(0, 50, (2, 7)), torch.randint(0, 50, (2, 5))
    embeds = model.backbone.embed_tokens(ids)
    with torch.no_grad():
        assert torch.equal(
            model(ids, decoder_input_ids=dec), model(None, inputs_embeds=embeds, decoder_input_ids=dec)
        )


def test_relative_buckets_golden() -> None:
    rel = torch.tensor([-30, -9, -3, 0, 3, 9, 30])
    assert relative_position_bucket(rel, True, 8, 20).tolist() == [3, 3, 2, 0, 6, 7, 7]
    assert relative_position_bucket(rel, False, 8, 20).tolist() == [7, 6, 3, 0, 0, 0, 0]


def test_shared_module_names_for_peft() -> None:
    model = t5_lm(
        T5Config(
            vocab_size=50, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_heads=2, feed_forward="gated-gelu"
        )
    )
    names = {n for n, _ in model.named_modules()}
    for name in (
        "backbone.embed_tokens",
        "backbone.encoder.layers.0.self_attn.q_proj",
        "backbone.decoder.layers.0.cross_attn.v_proj",
        "backbone.decoder.layers.0.cross_attn_norm",
        "backbone.encoder.layers.0.mlp.gate_proj",
        "backbone.encoder.layers.0.mlp.up_proj",
        "backbone.decoder.layers.0.mlp.down_proj",
        "head.lm_head",
    ):
        assert name in names
    assert all(
        hasattr(m, "prefix") for n, m in model.named_modules() if n.endswith(("self_attn", "cross_attn"))
    )


def test_bad_config_and_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="feed_forward 'swiglu' is not one of relu, gated-gelu"):
        T5Config(feed_forward="swiglu")
    hf = hf_t5("v1.0")
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    state = load_file(str(tmp_path / "model.safetensors"))
    state["encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(3, 3)
    with pytest.raises(
        CheckpointError, match=r"weight 'encoder.block.0.layer.0.SelfAttention.q.weight' has shape \(3, 3\)"
    ):
        it5.build_from_hf(config, state)
