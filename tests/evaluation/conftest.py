"""Tiny GPT-2 and Llama checkpoints trained a few steps on a toy corpus, written with plmkit.save_hf,
and small local task files: what the parity tests score with plmkit and with lm-evaluation-harness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import processors
from toy_world import corpus, toy_lines

import plmkit
from plmkit.data.tokenizer import train_tokenizer
from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.models.llama import LlamaConfig, llama_lm
from plmkit.objectives.clm import causal_lm_loss


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy_data")
    train, test = toy_lines(40, 0), toy_lines(12, 1)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test), encoding="utf-8")
    (root / "corpus.txt").write_text(corpus(toy_lines(200, 2)), encoding="utf-8")
    # Documents longer than the 128-token window: perplexity runs over several rolling windows.
    pages = [{"page": corpus(toy_lines(n, 10 + n))} for n in (3, 12, 25)]
    (root / "pages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pages), encoding="utf-8")
    return root


def _train(model: torch.nn.Module, ids: list[int], steps: int = 200) -> None:
    stream = torch.tensor(ids)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(steps):
        starts = torch.randint(0, len(stream) - 65, (8,), generator=torch.Generator().manual_seed(step))
        batch = torch.stack([stream[s : s + 65] for s in starts.tolist()])
        loss_sum, n = causal_lm_loss(model(batch[:, :-1]), batch[:, 1:])
        opt.zero_grad()
        (loss_sum / n).backward()
        opt.step()
    model.eval()


def _checkpoint(family: str, out: Path, data: Path) -> Path:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if family == "gpt2":
        tok = train_tokenizer([data / "corpus.txt"], kind="bpe", vocab_size=300,
                              special_tokens=["<|endoftext|>"])
        model = gpt2_lm(GPT2Config(vocab_size=tok.vocab_size, max_positions=128, d_model=32, num_layers=2,
                                   num_heads=2, dropout=0.0))
    else:
        tok = train_tokenizer([data / "corpus.txt"], kind="bpe", vocab_size=300,
                              special_tokens={"bos": "<s>", "eos": "</s>", "unk": "<unk>"})
        # Llama's tokenizer puts BOS before every text; lm-eval and plmkit must both see it.
        tok.backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
        model = llama_lm(LlamaConfig(vocab_size=tok.vocab_size, max_positions=128, d_model=32, num_layers=2,
                                     num_heads=4, num_kv_heads=2, d_ff=64))
    ids = tok.encode((data / "corpus.txt").read_text(encoding="utf-8"), add_special_tokens=False)
    _train(model, ids)
    plmkit.save_hf(model, out, tokenizer=tok)
    return out


_BUILT: dict[str, Path] = {}


def _built(family: str, tmp_path_factory, data: Path) -> Path:
    if family not in _BUILT:
        _BUILT[family] = _checkpoint(family, tmp_path_factory.mktemp(family), data)
    return _BUILT[family]


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def checkpoint(request, tmp_path_factory, toy_data) -> Path:
    return _built(request.param, tmp_path_factory, toy_data)


@pytest.fixture(scope="session")
def gpt2_checkpoint(tmp_path_factory, toy_data) -> Path:
    return _built("gpt2", tmp_path_factory, toy_data)
