"""int8 weight-only quantization: the arithmetic, closeness to fp32, save/load, generation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import plmkit
from plmkit.errors import CheckpointError, ConfigError
from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.models.llama import LlamaConfig, llama_lm
from plmkit.models.quantize import Int8Linear, quantize_weight

torch.set_num_threads(1)


def tiny_gpt(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return gpt2_lm(GPT2Config(vocab_size=211, max_positions=64, d_model=32, num_layers=2, num_heads=2)).eval()


def test_quantize_weight_is_symmetric_per_channel():
    w = torch.randn(7, 33, generator=torch.Generator().manual_seed(0))
    w[3] = 0.0
    q, scale = quantize_weight(w)
    assert q.dtype == torch.int8 and scale.shape == (7,)
    assert int(q.abs().max()) == 127  # the largest entry of each nonzero row maps to ±127
    assert torch.equal(q.abs().amax(1)[[0, 1, 2, 4, 5, 6]], torch.full((6,), 127, dtype=torch.int8))
    assert float(scale[3]) == 1.0 and int(q[3].abs().max()) == 0
    assert bool(((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-7).all())


def test_int8_linear_equals_its_dequantized_product():
    g = torch.Generator().manual_seed(1)
    linear = torch.nn.Linear(48, 130)
    x = torch.randn(5, 3, 48, generator=g)
    layer = Int8Linear.from_linear(linear)
    ref = F.linear(x, layer.dequantized_weight(), linear.bias.detach())
    out = layer(x)
    assert out.shape == (5, 3, 130) and out.dtype == torch.float32
    # bf16 activations inside the product: relative rounding 2^-8 of each term.
    assert float((out - ref).abs().max()) <= 2e-2 * float(ref.abs().max())


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    return llama_lm(LlamaConfig(vocab_size=211, max_positions=64, d_model=32, num_layers=2, num_heads=4,
                                num_kv_heads=2, d_ff=64)).eval()


@pytest.mark.parametrize("build", [tiny_gpt, tiny_llama])
def test_quantized_logits_are_close_to_fp32(build):
    model = build()
    ids = torch.randint(0, 211, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(ids)
        out = plmkit.quantize(model, "int8")(ids)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    err = (out - ref).abs().max() / ref.abs().max()
    assert float(err) < 0.03
    assert float((out.log_softmax(-1).exp() - ref.log_softmax(-1).exp()).abs().max()) < 0.01


def test_save_load_round_trip_is_exact(tmp_path):
    model = plmkit.quantize(tiny_gpt(), "int8")
    plmkit.save_quantized(model, tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["quantization"]["method"] == "int8"
    stored = load_file(str(tmp_path / "q" / "model.safetensors"))
    assert stored["head.lm_head.weight_int8"].dtype == torch.int8
    assert stored["head.lm_head.weight_scale"].dtype == torch.float32
    loaded = plmkit.load_quantized(tmp_path / "q").model
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    ids = torch.randint(0, 211, (1, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))
    # A second save replaces the first whole.
    plmkit.save_quantized(loaded, tmp_path / "q")
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_greedy_generation_runs_and_mostly_agrees_with_fp32():
    fp32 = tiny_gpt()
    quant = plmkit.quantize(tiny_gpt(), "int8")
    prompt = torch.randint(0, 211, (1, 6), generator=torch.Generator().manual_seed(4))
    a = plmkit.generate(fp32, prompt, max_new_tokens=8)
    b = plmkit.generate(quant, prompt, max_new_tokens=8)
    assert b.shape == (1, 8)
    assert int(a[0, 0]) == int(b[0, 0])  # the first step sees the same prompt: the top token survives


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="int4"):
        plmkit.quantize(tiny_gpt(), "int4")
    with pytest.raises(ConfigError, match="no linear layers"):
        plmkit.quantize(torch.nn.Embedding(3, 4), "int8")
    with pytest.raises(CheckpointError, match="plmkit.quantize first"):
        plmkit.save_quantized(tiny_gpt(), tmp_path / "x")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="refusing"):
        plmkit.save_quantized(plmkit.quantize(tiny_gpt()), tmp_path / "keep")
    assert (tmp_path / "keep" / "notes.txt").read_text() == "mine"


def test_generate_recipe_quantize_option_and_saved_export(tmp_path, capsys):
    from plmkit import cli
    from plmkit.data.tokenizer import CharTokenizer

    tok = CharTokenizer(sorted(set("ROMEO: abcdefghijklmnopqrstuvwxyz\n")))
    torch.manual_seed(0)
    model = gpt2_lm(GPT2Config(vocab_size=tok.vocab_size, max_positions=32, d_model=16, num_layers=1,
                               num_heads=2))
    plmkit.save_hf(model, tmp_path / "hf", tokenizer=tok)
    args = ["--prompt=ROMEO:", "--max_new_tokens=12", "--no-stream"]
    assert cli.main(["generate", f"--model={tmp_path / 'hf'}", "--quantize=int8", *args]) == 0
    from_option = capsys.readouterr().out
    plmkit.save_quantized(plmkit.quantize(model, "int8"), tmp_path / "q", tokenizer=tok)
    assert cli.main(["generate", f"--model={tmp_path / 'q'}", *args]) == 0
    from_export = capsys.readouterr().out
    assert cli.main(["generate", f"--model={tmp_path / 'q'}", "--quantize=int8", *args]) == 0
    assert capsys.readouterr().out == from_export  # already int8: nothing more to do
    assert "ROMEO:" in from_option and from_option == from_export  # same int8 weights, same greedy text
    assert cli.main(["generate", f"--model={tmp_path / 'hf'}", "--quantize=int3", *args]) != 0
    assert "int3" in capsys.readouterr().err


def test_eval_recipe_perplexity_with_int8_is_close_to_fp32(tmp_path, capsys):
    from plmkit import cli
    from plmkit.data.tokenizer import CharTokenizer

    text = "ROMEO: but soft what light through yonder window breaks\n" * 4
    tok = CharTokenizer(sorted(set(text)))
    torch.manual_seed(0)
    model = gpt2_lm(GPT2Config(vocab_size=tok.vocab_size, max_positions=32, d_model=16, num_layers=1,
                               num_heads=2))
    plmkit.save_hf(model, tmp_path / "hf", tokenizer=tok)
    (tmp_path / "val.txt").write_text(text)
    reports = []
    for extra in ([], ["--quantize=int8"]):
        assert cli.main(["eval", f"--model={tmp_path / 'hf'}", f"--perplexity={tmp_path / 'val.txt'}",
                         "--seq_len=16", *extra]) == 0
        out = capsys.readouterr().out
        reports.append(json.loads(out[out.index("{"):]))
    fp32, int8 = (r["perplexity"] for r in reports)
    assert fp32 != int8 and abs(int8 / fp32 - 1) < 0.01
