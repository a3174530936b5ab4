"""`plmkit generate` from the command line: past the context window, encoder-decoders, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import plmkit
from plmkit import cli
from plmkit.data.tokenizer import CharTokenizer

torch.set_num_threads(1)
CHARS = sorted(set("ROMEO: abcdefghijklmnopqrstuvwxyz\n"))


def tiny_gpt(path: Path, max_positions: int = 16) -> Path:
    from plmkit.models.gpt import GPT2Config, gpt2_lm

    tok = CharTokenizer(CHARS)
    torch.manual_seed(0)
    model = gpt2_lm(GPT2Config(vocab_size=tok.vocab_size, max_positions=max_positions, d_model=16,
                               num_layers=1, num_heads=2))
    plmkit.save_hf(model, path, tokenizer=tok)
    return path


def tiny_t5(path: Path) -> Path:
    from plmkit.models.t5 import T5Config, t5_lm

    tok = CharTokenizer(CHARS, {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"})
    torch.manual_seed(0)
    model = t5_lm(T5Config(vocab_size=tok.vocab_size, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                           dropout=0.0, pad_token_id=tok.pad_id, eos_token_id=tok.eos_id,
                           decoder_start_token_id=tok.pad_id))
    plmkit.save_hf(model, path, tokenizer=tok)
    return path


def test_generate_runs_past_the_context_window(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_dir = tiny_gpt(tmp_path / "gpt")
    assert cli.main(["generate", f"--model={model_dir}", "--prompt=ROMEO:", "--max_new_tokens=40"]) == 0
    out = capsys.readouterr().out
    text = out.split("\n{")[0]  # the streamed text, then the JSON summary
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 40


def test_window_error_is_on_its_own_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model_dir = tiny_gpt(tmp_path / "gpt")
    argv = ["generate", f"--model={model_dir}", "--prompt=ROMEO:", "--max_new_tokens=40",
            "--no-sliding_window"]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing of the prompt printed before the refusal
    assert captured.err.startswith("error: prompt of 6 tokens + max_new_tokens=40 exceeds the model's")


def test_error_mid_stream_starts_a_new_line(tmp_path: Path, capsys, monkeypatch) -> None:
    import plmkit.models.generation as generation
    from plmkit.errors import DataError

    def failing(model, prompts, streamer=None, **kw):
        streamer(torch.tensor([CHARS.index("a")]))
        raise DataError("something broke")

    monkeypatch.setattr(generation, "generate", failing)
    model_dir = tiny_gpt(tmp_path / "gpt")
    assert cli.main(["generate", f"--model={model_dir}", "--prompt=ROMEO:"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "ROMEO:a\n" and captured.err == "error: something broke\n"


@pytest.mark.parametrize("options", [[], ["--do_sample", "--top_k=5"], ["--num_beams=3"]])
def test_generate_with_t5_matches_library(tmp_path: Path, capsys, options: list[str]) -> None:
    from plmkit.models.seq2seq_generation import generate_texts

    model_dir = tiny_t5(tmp_path / "t5")
    assert cli.main(["generate", f"--model={model_dir}", "--prompt=abc", "--max_new_tokens=6", *options]) == 0
    printed = capsys.readouterr().out.splitlines()[0]
    loaded = plmkit.load(model_dir)
    kw = {"do_sample": "--do_sample" in options, "top_k": 5 if "--top_k=5" in options else 0,
          "num_beams": 3 if "--num_beams=3" in options else 1}
    expected = generate_texts(loaded.model, loaded.tokenizer, ["abc"], max_new_tokens=6,
                              generator=torch.Generator().manual_seed(0), **kw)
    assert printed == expected[0]


def test_generate_refuses_encoder_only_models(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from plmkit.models.bert import BertConfig, bert_mlm

    tok = CharTokenizer(CHARS, {"pad": "[PAD]", "mask": "[MASK]"})
    plmkit.save_hf(bert_mlm(BertConfig(vocab_size=tok.vocab_size, d_model=16, num_layers=1, num_heads=2)),
                   tmp_path / "bert", tokenizer=tok)
    assert cli.main(["generate", f"--model={tmp_path / 'bert'}", "--prompt=abc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bert model without a generating LM head cannot generate" in err
