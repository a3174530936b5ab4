"""Llama 3.x RoPE scalings, Qwen2/3, Mistral, Phi-3, Gemma 2 checkpoints in and out, against transformers."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import save_file
from tiny_decoders import FAMILIES, V, batch, hf_decoder

import plmkit
from plmkit.errors import CheckpointError
from plmkit.interop.hf import load, save_hf
from plmkit.models.layers import positions_from_mask

TOL = 1e-4
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (transformers model, directory it was saved to), built once per family."""
    cache = {}

    def get(name: str):
        if name not in cache:
            hf = hf_decoder(name)
            path = tmp_path_factory.mktemp(name)
            hf.save_pretrained(path)
            cache[name] = hf, path
        return cache[name]

    return get


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_match_transformers_with_and_without_left_padding(name, saved) -> None:
    hf, path = saved(name)
    ours = load(path).model
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=TOL, rtol=0)
        ref = hf(ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
        got = ours(ids, mask)
        real = mask.bool()
        torch.testing.assert_close(got[real], ref[real], atol=TOL, rtol=0)
        # Dynamic NTK and LongRoPE pick their frequencies from the batch's longest row (as transformers
        # does), so only the other families give a padded row exactly what it gets alone.
        if name not in ("llama-dynamic", "phi3-longrope"):
            torch.testing.assert_close(got[1, 4:], ours(ids[1:2, 4:])[0], atol=TOL, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_save_hf_loads_in_transformers_with_the_same_logits(name, saved, tmp_path) -> None:
    hf, path = saved(name)
    ours = load(path).model
    save_hf(ours, tmp_path / "out")
    back = type(hf).from_pretrained(tmp_path / "out").eval()
    ids, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, hf(ids).logits, atol=TOL, rtol=0)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == hf.config.model_type


def _disable(model, name: str) -> None:
    """Turn off the option that makes `name` what it is."""
    cfg, layers = model.config, model.backbone.layers
    if name.startswith(("llama-", "phi3-longrope")):
        cfg.rope_scaling = None
    elif name == "qwen2":
        for block in layers:
            block.attn.q_proj.bias.data.zero_()
    elif name == "qwen3":
        for block in layers:
            block.attn.q_norm = block.attn.k_norm = None
    elif name in ("mistral", "phi3", "gemma2-untied", "qwen2-window"):
        cfg.sliding_window = None
        for block in layers:
            block.attn.window = None
    elif name == "gemma2":
        model.head.softcap = None
        for block in layers:
            block.attn.softcap = None


@pytest.mark.parametrize("name", [n for n in FAMILIES if n != "llama"])
def test_each_family_option_moves_the_logits(name, saved) -> None:
    """The parity above is not vacuous: without the family's option the logits are far off."""
    _, path = saved(name)
    ours = load(path).model
    ids, _ = batch()
    with torch.no_grad():
        before = ours(ids)
        _disable(ours, name)
        assert (ours(ids) - before).abs().max() > 50 * TOL


def test_sharded_save_and_load(saved, tmp_path) -> None:
    hf, path = saved("qwen2")
    ours = load(path).model
    save_hf(ours, tmp_path / "sharded", max_shard_size="20KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    back = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "sharded").eval()
    again = load(tmp_path / "sharded").model
    ids, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, hf(ids).logits, atol=TOL, rtol=0)
        torch.testing.assert_close(again(ids), hf(ids).logits, atol=TOL, rtol=0)
    save_hf(again, tmp_path / "sharded")  # below the default 5GB: one file again, the index gone
    assert (tmp_path / "sharded" / "model.safetensors").exists()
    assert not (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    with pytest.raises(CheckpointError, match="max_shard_size 'lots'"):
        save_hf(again, tmp_path / "x", max_shard_size="lots")


def test_generation_config_defaults_are_respected(saved, tmp_path) -> None:
    hf, path = saved("mistral")
    model = load(path).model
    prompts = [[5, 9, 2, 33, 7, 1], [12, 4]]
    free = plmkit.generate(model, prompts, max_new_tokens=12, pad_token_id=0).tolist()
    stops = [free[0][3], free[1][5]]  # two EOS ids, each first met in one row
    hf.generation_config.eos_token_id = stops
    hf.generation_config.do_sample = False
    hf.save_pretrained(tmp_path / "gen")
    loaded = load(tmp_path / "gen")
    assert loaded.generation_config["eos_token_id"] == stops
    got = plmkit.generate(loaded.model, prompts, max_new_tokens=12, pad_token_id=0).tolist()
    ids, mask = plmkit.models.generation.left_pad(prompts, 0)
    ref = hf.generate(ids, attention_mask=mask, max_new_tokens=12, pad_token_id=0)[:, ids.shape[1] :].tolist()
    assert [row[: len(r)] for row, r in zip(got, ref)] == ref
    assert got[0][3] in stops and all(t == 0 for t in got[0][4:])
    # Sampling defaults: the file's temperature/top_p/top_k stand in for the arguments left out.
    sampling = {"do_sample": True, "temperature": 0.7, "top_p": 0.9}
    (tmp_path / "gen" / "generation_config.json").write_text(json.dumps(sampling))
    loaded = load(tmp_path / "gen")
    assert loaded.generation_config == {**sampling, "top_k": 50}  # transformers' default top_k when sampling
    a = plmkit.generate(loaded.model, prompts, max_new_tokens=8, generator=torch.Generator().manual_seed(3))
    b = plmkit.generate(
        model,
        prompts,
        max_new_tokens=8,
        do_sample=True,
        temperature=0.7,
        top_p=0.9,
        top_k=50,
        generator=torch.Generator().manual_seed(3),
    )
    assert torch.equal(a, b)
    save_hf(loaded.model, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "generation_config.json").read_text())["temperature"] == 0.7


def _write(path, config: dict, weights: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file(weights, str(path / "model.safetensors"))


def _tiny_config(**changes) -> dict:
    config = dict(
        model_type="mistral",
        vocab_size=V,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        sliding_window=4,
    )
    return {**config, **changes}


def test_config_shapes_checked_against_the_header_before_allocating(saved, tmp_path) -> None:
    from plmkit.interop.llama import export_state

    _, path = saved("mistral")
    # 10^10 x 32 fp32 would be 1.28 TB: the error must come from the shape check, not the allocator.
    _write(tmp_path / "huge", _tiny_config(vocab_size=10**10), export_state(load(path).model))
    with pytest.raises(
        CheckpointError, match=r"has shape \(97, 32\) but the config expects \(10000000000, 32\)"
    ):
        load(tmp_path / "huge")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"rope_parameters": {"rope_type": "ntk-by-parts", "factor": 2.0}},
            r"rope_type 'ntk-by-parts' is not supported "
            r"\(supported: default, linear, dynamic, yarn, llama3, longrope\)",
        ),
        (
            {"model_type": "falcon"},
            r"unknown model_type 'falcon' \(known: .*gemma2.*mistral.*phi3.*qwen2.*qwen3",
        ),
        ({"num_key_value_heads": 3}, r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)"),
        ({"num_attention_heads": 5}, r"d_model \(32\) must be divisible by num_heads \(5\)"),
        ({"sliding_window": 100}, r"sliding_window \(100\) is larger than the context max_positions \(64\)"),
        ({"hidden_size": None}, r"missing key 'hidden_size'"),
    ],
)
def test_bad_configs_give_one_line_errors(saved, tmp_path, changes, message) -> None:
    from plmkit.interop.llama import export_state

    _, path = saved("mistral")
    config = _tiny_config(**changes)
    config = {k: v for k, v in config.items() if v is not None}
    _write(tmp_path / "bad", config, export_state(load(path).model))
    with pytest.raises(CheckpointError, match=message) as err:
        load(tmp_path / "bad")
    assert "\n" not in str(err.value)


def test_missing_tensor_is_named(saved, tmp_path) -> None:
    from plmkit.interop.phi3 import export_to_hf

    _, path = saved("phi3")
    config, weights = export_to_hf(load(path).model)
    del weights["model.layers.1.self_attn.qkv_proj.weight"]
    _write(tmp_path / "missing", config, weights)
    with pytest.raises(CheckpointError, match=r"missing weight for 'backbone.layers.1.attn.q_proj.weight'"):
        load(tmp_path / "missing")
    config, weights = export_to_hf(load(path).model)
    weights["model.layers.0.self_attn.qkv_proj.weight"] = weights["model.layers.0.self_attn.qkv_proj.weight"][
        :-8
    ]
    _write(tmp_path / "short", config, weights)
    with pytest.raises(
        CheckpointError, match=r"qkv_proj.weight' has 56 rows but the config expects 32 \+ 2 x 16"
    ):
        load(tmp_path / "short")


def test_export_refuses_options_the_model_type_cannot_hold(saved, tmp_path) -> None:
    _, path = saved("qwen3")
    model = load(path).model
    model.config.model_type = "llama"
    with pytest.raises(
        CheckpointError, match="cannot save as model_type 'llama': qk_norm is exactly qwen3's"
    ):
        save_hf(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["phi3-longrope", "qwen2-window", "gemma2", "llama-llama3"])
def test_plmkit_training_checkpoint_layout_round_trips(name, saved, tmp_path) -> None:
    """A plmkit checkpoint (config.json = the dataclass config) of every family loads back the same."""
    from plmkit.interop.convert import drop_tied
    from plmkit.training.checkpoint import model_description

    _, path = saved(name)
    model = load(path).model
    (tmp_path / "config.json").write_text(json.dumps(model_description(model)))
    save_file(drop_tied(model, dict(model.state_dict())), str(tmp_path / "model.safetensors"))
    again = load(tmp_path).model
    assert again.config == model.config
    ids, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(again(ids), model(ids), atol=0, rtol=0)
