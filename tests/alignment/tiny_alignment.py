"""Tiny random models, tokenizers and batches shared by the alignment tests (not the PPO tests' helpers)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import models, pre_tokenizers

from plmkit.data.tokenizer import Tokenizer
from plmkit.interop.hf import load

VOCAB = 97
EOS, PAD = 95, 96


def rust_tokenizer() -> RustTokenizer:
    """Whitespace words w0..w94 plus <eos> and <pad>: every id is one word, so tests read like their ids."""
    vocab = {f"w{i}": i for i in range(EOS)}
    vocab.update({"<eos>": EOS, "<pad>": PAD})
    backend = RustTokenizer(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return backend


def plmkit_tokenizer(eos: bool = True) -> Tokenizer:
    roles = {"pad": "<pad>", **({"eos": "<eos>"} if eos else {})}
    return Tokenizer(rust_tokenizer(), roles)


def hf_tokenizer() -> transformers.PreTrainedTokenizerFast:
    return transformers.PreTrainedTokenizerFast(tokenizer_object=rust_tokenizer(), eos_token="<eos>",
                                                pad_token="<pad>")


def hf_gpt2(seed: int = 0) -> transformers.GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD,
    )
    return transformers.GPT2LMHeadModel(cfg)


def plmkit_twin(hf: transformers.PreTrainedModel, where: Path) -> torch.nn.Module:
    """The same weights as a plmkit model (through a safetensors checkpoint, as a user would load them)."""
    hf.save_pretrained(where, safe_serialization=True)
    return load(where).model


def pair_batch(batch_size: int = 3, length: int = 10, seed: int = 1) -> dict[str, torch.Tensor]:
    """A right-padded preference batch: B chosen rows over B rejected rows, prompts of 3-4 tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, EOS, (2 * batch_size, length), generator=g)
    lengths = torch.randint(length - 4, length + 1, (2 * batch_size,), generator=g)
    prompt = torch.randint(3, 5, (batch_size,), generator=g).repeat(2)
    positions = torch.arange(length)[None]
    attention_mask = (positions < lengths[:, None]).long()
    response_mask = ((positions >= prompt[:, None]) & (positions < lengths[:, None])).long()
    ids = ids.masked_fill(attention_mask == 0, PAD)
    ids[torch.arange(2 * batch_size), lengths - 1] = EOS
    return {"input_ids": ids, "attention_mask": attention_mask, "response_mask": response_mask}


def hf_param(hf: transformers.PreTrainedModel, name: str) -> torch.nn.Parameter:
    return dict(hf.named_parameters())[name]


# plmkit parameter -> (transformers parameter, whether GPT-2's Conv1D stores it transposed)
GRAD_PAIRS = {
    "backbone.embed_tokens.weight": ("transformer.wte.weight", False),
    "backbone.embed_positions.weight": ("transformer.wpe.weight", False),
    "backbone.layers.1.mlp.up_proj.weight": ("transformer.h.1.mlp.c_fc.weight", True),
    "backbone.layers.0.attn.o_proj.weight": ("transformer.h.0.attn.c_proj.weight", True),
    "backbone.norm.weight": ("transformer.ln_f.weight", False),
}


def max_grad_difference(ours: torch.nn.Module, hf: transformers.PreTrainedModel) -> float:
    params = dict(ours.named_parameters())
    worst = 0.0
    for name, (hf_name, transposed) in GRAD_PAIRS.items():
        theirs = hf_param(hf, hf_name).grad
        theirs = theirs.t() if transposed else theirs
        worst = max(worst, (params[name].grad - theirs).abs().max().item())
    return worst
