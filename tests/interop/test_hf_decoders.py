"""Parity with transformers for the decoder families: HF save -> plmkit.load and plmkit -> HF load."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import save_file

from plmkit.errors import CheckpointError, TokenizerError
from plmkit.interop.hf import load, save_hf
from plmkit.models.layers import positions_from_mask

TOL = 1e-4


def tiny_gpt2(tied: bool = True) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4, tie_word_embeddings=tied,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def tiny_llama(tied: bool = False, kv_heads: int = 2) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, max_position_embeddings=64, tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )
    return transformers.LlamaForCausalLM(cfg).eval()


MODELS = {
    "gpt2-tied": lambda: tiny_gpt2(True),
    "gpt2-untied": lambda: tiny_gpt2(False),
    "llama-gqa-untied": lambda: tiny_llama(False, 2),
    "llama-mha-tied": lambda: tiny_llama(True, 4),
    "llama-mqa": lambda: tiny_llama(False, 1),
}


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding
    mask[2, :1] = 0
    return ids, mask


@pytest.mark.parametrize("name", MODELS)
def test_hf_to_plmkit_logits(name: str, tmp_path) -> None:
    hf = MODELS[name]()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = load(tmp_path).model
    ids, mask = batch()
    with torch.no_grad():
        ref = hf(ids).logits
        torch.testing.assert_close(ours(ids), ref, atol=TOL, rtol=0)
        # Left padding: HF needs explicit positions; plmkit derives them from the mask.
        ref_pad = hf(ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
        got_pad = ours(ids, mask)
        real = mask.bool()
        torch.testing.assert_close(got_pad[real], ref_pad[real], atol=TOL, rtol=0)
        # And each padded row equals that row alone, unpadded.
        alone = ours(ids[1:2, 4:])
        torch.testing.assert_close(got_pad[1, 4:], alone[0], atol=TOL, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_plmkit_to_hf_logits(name: str, tmp_path) -> None:
    hf = MODELS[name]()
    hf.save_pretrained(tmp_path / "a", safe_serialization=True)
    ours = load(tmp_path / "a").model
    save_hf(ours, tmp_path / "b")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "b").eval()
    ids, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, ours(ids), atol=TOL, rtol=0)
    assert not list((tmp_path / "b").glob(".tmp-*"))


def test_sharded_index(tmp_path) -> None:
    hf = tiny_llama()
    hf.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ids, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path).model(ids), hf(ids).logits, atol=TOL, rtol=0)


def test_pickle_refused_unless_allowed(tmp_path) -> None:
    hf = tiny_gpt2()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="pickle checkpoint: unpickling runs arbitrary code"):
        load(tmp_path)
    ids, _ = batch()
    with torch.no_grad():
        got = load(tmp_path, allow_pickle=True).model(ids)
        torch.testing.assert_close(got, hf(ids).logits, atol=TOL, rtol=0)


def test_unknown_model_type(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba9"}))
    with pytest.raises(CheckpointError, match=r"config.json: unknown model_type 'mamba9'"):
        load(tmp_path)


def test_shape_mismatch_names_key(tmp_path) -> None:
    hf = tiny_llama()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    msg = (r"weight 'model.layers.0.mlp.down_proj.weight' has shape \(32, 48\)"
           r" but the config expects \(32, 40\)")
    with pytest.raises(CheckpointError, match=msg):
        load(tmp_path)


def test_missing_weight_and_missing_tokenizer(tmp_path) -> None:
    hf = tiny_gpt2()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    loaded = load(tmp_path)
    assert loaded.tokenizer is None
    with pytest.raises(TokenizerError, match="no tokenizer found"):
        loaded.require_tokenizer()
    dropped = ("lm_head.weight", "transformer.ln_f.bias")
    state = {k: v for k, v in hf.state_dict().items() if k not in dropped}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing weight for 'backbone.norm.bias'"):
        load(tmp_path)


def test_no_weights(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="no weights"):
        load(tmp_path)
