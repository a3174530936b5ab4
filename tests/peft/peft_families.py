"""Tiny models of every family that exists, for the PEFT invariant tests."""

from __future__ import annotations

import torch

from plmkit.models.bart import BartConfig, bart_lm
from plmkit.models.bert import BertConfig, BertModel
from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.models.heads import SequenceClassificationHead, TaskModel
from plmkit.models.llama import LlamaConfig, llama_lm
from plmkit.models.t5 import T5Config, t5_lm

V = 97


def tiny_gpt2() -> torch.nn.Module:
    return gpt2_lm(GPT2Config(vocab_size=V, max_positions=64, d_model=32, num_layers=2, num_heads=4))


def tiny_llama() -> torch.nn.Module:
    return llama_lm(LlamaConfig(vocab_size=V, max_positions=64, d_model=32, num_layers=2, num_heads=4,
                                num_kv_heads=2, d_ff=48))


def tiny_bert() -> torch.nn.Module:
    cfg = BertConfig(vocab_size=V, d_model=32, num_layers=2, num_heads=4, d_ff=48, max_positions=64,
                     dropout=0.0, attention_dropout=0.0, add_pooler=False)
    return TaskModel(BertModel(cfg), SequenceClassificationHead(32, 3, dropout=0.0))


def tiny_t5() -> torch.nn.Module:
    return t5_lm(T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, dropout=0.0))


def tiny_bart() -> torch.nn.Module:
    return bart_lm(BartConfig(vocab_size=V, max_positions=64, d_model=32, num_layers=2, num_heads=4, d_ff=48,
                              dropout=0.0))


FACTORIES = {"gpt2": tiny_gpt2, "llama": tiny_llama, "bert": tiny_bert, "t5": tiny_t5, "bart": tiny_bart}
ENCODER_DECODERS = {"t5", "bart"}
# Decoders pad on the left (positions come from the mask); encoders, T5's included, on the right.
LEFT_PADDED = {"gpt2", "llama"}


def make(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return FACTORIES[family]().eval()


def inputs(family: str, seed: int = 1, batch: int = 2, length: int = 7) -> dict[str, torch.Tensor]:
    """A batch whose second row carries 2 padding tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, V, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    if family in LEFT_PADDED:
        mask[1, :2] = 0
    else:
        mask[1, -2:] = 0
    x = {"input_ids": ids, "attention_mask": mask}
    if family in ENCODER_DECODERS:
        x["decoder_input_ids"] = torch.randint(2, V, (batch, 5), generator=g)
    return x


def second_row_alone(family: str, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The padded second row without its padding."""
    cut = slice(2, None) if family in LEFT_PADDED else slice(None, -2)
    out = {"input_ids": x["input_ids"][1:, cut], "attention_mask": x["attention_mask"][1:, cut]}
    if "decoder_input_ids" in x:
        out["decoder_input_ids"] = x["decoder_input_ids"][1:]
    return out


def second_row_outputs(family: str, out: torch.Tensor, padded: bool) -> torch.Tensor:
    """The outputs of the second row's real tokens (the whole row where outputs are not per source token)."""
    row = out[1] if padded else out[0]
    if family in ("gpt2", "llama") and padded:
        return row[2:]
    return row
