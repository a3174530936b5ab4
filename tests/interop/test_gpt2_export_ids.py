"""An exported GPT-2's config.json names the special ids its vocabulary has, never transformers' 50256
default outside a smaller vocabulary."""

from __future__ import annotations

import json
import warnings

import torch
import transformers

import plmkit
from plmkit.data.tokenizer import CharTokenizer
from plmkit.models.gpt import GPT2Config, gpt2_lm


def _tiny(vocab_size: int) -> torch.nn.Module:
    return gpt2_lm(GPT2Config(vocab_size=vocab_size, max_positions=16, d_model=16, num_layers=1, num_heads=2))


def test_small_vocabulary_exports_the_tokenizers_ids(tmp_path) -> None:
    tok = CharTokenizer(list("abc"), {"eos": "<eos>"})
    plmkit.save_hf(_tiny(tok.vocab_size), tmp_path / "with_eos", tokenizer=tok)
    config = json.loads((tmp_path / "with_eos" / "config.json").read_text())
    assert config["eos_token_id"] == tok.eos_id == 3 and config["bos_token_id"] is None
    plmkit.save_hf(_tiny(3), tmp_path / "none", tokenizer=CharTokenizer(list("abc")))
    config = json.loads((tmp_path / "none" / "config.json").read_text())
    assert config["eos_token_id"] is None and config["bos_token_id"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "50256 is out of vocabulary" complaint
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "with_eos")
    assert hf.config.eos_token_id == 3


def test_full_gpt2_vocabulary_keeps_endoftext(tmp_path) -> None:
    plmkit.save_hf(_tiny(50257), tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["bos_token_id"] == config["eos_token_id"] == 50256
