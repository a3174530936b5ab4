"""BART against transformers on tiny random configs: LM and classification logits both ways, generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as tr
from safetensors.torch import load_file, save_file

from plmkit.errors import CheckpointError
from plmkit.interop import bart as ibart
from plmkit.interop.convert import drop_tied
from plmkit.models.seq2seq_generation import generate_seq2seq

EOS, PAD = 2, 1


def hf_config() -> tr.BartConfig:
    return tr.BartConfig(
        vocab_size=99,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=40,
        decoder_ffn_dim=40,
        max_position_embeddings=64,
        dropout=0.0,
        forced_eos_token_id=None,
        num_labels=3,
    )


def load_plmkit(hf: tr.PreTrainedModel, path: Path) -> torch.nn.Module:
    hf.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    return ibart.build_from_hf(config, load_file(str(path / "model.safetensors"))).eval()


def export_and_reload(model: torch.nn.Module, cls: type, path: Path) -> tr.PreTrainedModel:
    config, state = ibart.export_to_hf(model)
    path.mkdir()
    save_file(
        drop_tied(model, {k: v.contiguous() for k, v in state.items()}), str(path / "model.safetensors")
    )
    (path / "config.json").write_text(json.dumps(config))
    return cls.from_pretrained(path).eval()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded sources that end in EOS (what BartForSequenceClassification reads)."""
    ids = torch.randint(3, 99, (3, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[0, -1] = EOS
    for row, length in ((1, 15), (2, 6)):
        ids[row, length - 1] = EOS
        ids[row, length:] = PAD
        mask[row, length:] = 0
    return ids, mask


@pytest.fixture(scope="module")
def lm_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    torch.manual_seed(0)
    hf = tr.BartForConditionalGeneration(hf_config()).eval()
    with torch.no_grad():
        hf.final_logits_bias.normal_()  # zero by default: make the mapping observable
    return hf, load_plmkit(hf, tmp_path_factory.mktemp("bart"))


def test_lm_logits_match_both_ways(lm_pair: tuple, tmp_path: Path) -> None:
    hf, model = lm_pair
    ids, mask = batch()
    dec = torch.randint(3, 99, (3, 11), generator=torch.Generator().manual_seed(2))
    dec_mask = torch.ones_like(dec)
    dec_mask[1, 7:] = 0
    with torch.no_grad():
        want = hf(
            input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask
        ).logits
        got = model(ids, mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    real = dec_mask.bool()
    assert (got - want)[real].abs().max() < 1e-4
    back = export_and_reload(model, tr.BartForConditionalGeneration, tmp_path / "export")
    with torch.no_grad():
        again = back(
            input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask
        ).logits
    assert (again - got)[real].abs().max() < 1e-4


def test_classification_logits_match_both_ways(tmp_path: Path) -> None:
    torch.manual_seed(0)
    hf = tr.BartForSequenceClassification(hf_config()).eval()
    model = load_plmkit(hf, tmp_path / "hf")
    ids, mask = batch()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        got = model(ids, mask)
    assert got.shape == (3, 3)
    assert (got - want).abs().max() < 1e-4
    back = export_and_reload(model, tr.BartForSequenceClassification, tmp_path / "export")
    with torch.no_grad():
        assert (back(input_ids=ids, attention_mask=mask).logits - got).abs().max() < 1e-4


@pytest.mark.parametrize(
    "settings",
    [dict(num_beams=1), dict(num_beams=3), dict(num_beams=4, length_penalty=0.6, no_repeat_ngram_size=2)],
)
def test_generation_matches_transformers(lm_pair: tuple, settings: dict) -> None:
    hf, model = lm_pair
    ids, mask = batch()
    want = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, **settings)[
        :, 1:
    ]
    got = generate_seq2seq(model, ids, mask, max_new_tokens=10, **settings)
    assert torch.equal(got, want)


def test_sampling_is_reproducible_with_a_generator(lm_pair: tuple) -> None:
    _, model = lm_pair
    ids, mask = batch()
    a = generate_seq2seq(
        model, ids, mask, max_new_tokens=6, do_sample=True, generator=torch.Generator().manual_seed(3)
    )
    b = generate_seq2seq(
        model, ids, mask, max_new_tokens=6, do_sample=True, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(a, b)


def test_unknown_architecture_is_a_one_line_error() -> None:
    config = hf_config().to_dict() | {"architectures": ["BartForQuestionAnswering"], "model_type": "bart"}
    with pytest.raises(
        CheckpointError, match="architecture 'BartForQuestionAnswering' is not supported for bart"
    ):
        ibart.build_from_hf(config, {})
