"""Bad PEFT input gives one-line errors that name the problem."""

from __future__ import annotations

import pytest
import torch
from peft_families import make

from plmkit.errors import CheckpointError, ConfigError, TrainingError
from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.peft import (
    BottleneckConfig,
    LoRAConfig,
    PeftOptions,
    apply_peft,
    check_params_changed,
    load_adapter,
    merge_and_unload,
    save_adapter,
    set_active_adapter,
    snapshot_trainable,
    trainable_report,
)

torch.set_num_threads(1)  # tiny matmuls run faster on one thread than contending for the cores


def test_target_matching_nothing_lists_available_names() -> None:
    with pytest.raises(ConfigError) as e:
        apply_peft(make("gpt2"), "lora", LoRAConfig(targets="q_proj,query"))
    msg = str(e.value)
    assert "target 'query' matches no module" in msg and "q_proj" in msg and "\n" not in msg


def test_rank_larger_than_layer() -> None:
    want = r"LoRA rank r=64 is larger than layer 'backbone.layers.0.attn.q_proj' \(32x32\)"
    with pytest.raises(ConfigError, match=want):
        apply_peft(make("gpt2"), "lora", LoRAConfig(r=64))


def test_adapter_on_base_with_other_shapes(tmp_path) -> None:
    model = apply_peft(make("gpt2"), "lora", LoRAConfig(r=4))
    save_adapter(model, tmp_path / "a")
    torch.manual_seed(0)
    wider = gpt2_lm(GPT2Config(vocab_size=97, max_positions=64, d_model=48, num_layers=2, num_heads=4))
    with pytest.raises(CheckpointError, match=r"adapter weight 'backbone.layers.0.attn.q_proj.lora_A.weight' "
                                              r"has shape \(4, 32\) but this model expects \(4, 48\)"):
        load_adapter(wider, tmp_path / "a")


def test_unknown_method_and_missing_adapter_dir(tmp_path) -> None:
    with pytest.raises(ConfigError, match="peft.method must be one of lora, adapters, prompt, prefix, ia3"):
        PeftOptions(method="lora2")
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        load_adapter(make("gpt2"), tmp_path)


def test_bottleneck_cannot_merge_and_switching_names() -> None:
    model = apply_peft(make("gpt2"), "adapters", BottleneckConfig(placement="pfeiffer", reduction=4))
    with pytest.raises(ConfigError, match="cannot be merged into plain weights"):
        merge_and_unload(model)
    with pytest.raises(ConfigError, match=r"no adapter named 'other' \(have: default\)"):
        set_active_adapter(model, "other")


def test_frozen_training_fails_the_guard() -> None:
    model = apply_peft(make("gpt2"), "lora", LoRAConfig(r=4))
    before = snapshot_trainable(model)
    with pytest.raises(TrainingError, match=r"8 of 8 trainable parameters did not change after 2 optimizer"):
        check_params_changed(model, before, steps=2)


def test_named_adapters_switch_and_head_trains(tmp_path) -> None:
    model = make("bert")
    model = apply_peft(model, "lora", LoRAConfig(r=2), name="a", modules_to_save="head")
    model = apply_peft(model, "lora", LoRAConfig(r=4), name="b")
    x = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".adapters." in n:
                p.normal_()
    out_b = model(**x)
    set_active_adapter(model, "a")
    out_a = model(**x)
    assert not torch.allclose(out_a, out_b)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(".adapters.a." in n or n.startswith("head.") for n in trainable)
    assert any(n.startswith("head.") for n in trainable)
    head = sum(p.numel() for p in model.head.parameters())
    lora_a = sum(p.numel() for n, p in model.named_parameters() if ".adapters.a." in n)
    assert trainable_report(model).startswith(f"trainable params: {head + lora_a:,} of ")
    save_adapter(model, tmp_path / "a")
    other = make("bert")
    with torch.no_grad():
        for p in other.head.parameters():
            p.normal_()
    loaded = load_adapter(other, tmp_path / "a")
    # The head is saved with the adapter, so a base with another head reproduces the outputs.
    torch.testing.assert_close(loaded(**x), out_a, rtol=0, atol=1e-6)
