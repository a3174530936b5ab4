"""PEFT invariants for every method on every model family (DESIGN.md, tests: PEFT invariants)."""

from __future__ import annotations

import pytest
import torch
from peft_families import ENCODER_DECODERS, FACTORIES, inputs, make, second_row_alone, second_row_outputs

from plmkit.peft import (
    BottleneckConfig,
    IA3Config,
    LoRAConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    adapter_parameters,
    apply_peft,
    check_params_changed,
    disable_adapters,
    fold_prefix,
    load_adapter,
    merge_and_unload,
    merge_lora,
    save_adapter,
    snapshot_trainable,
    trainable_report,
    unmerge_lora,
)
from plmkit.training.loop import enable_activation_checkpointing

torch.set_num_threads(1)  # tiny matmuls run faster on one thread than contending for the cores
FAMILIES = sorted(FACTORIES)

# Methods whose adapter is the identity at initialization (zero-initialized B / up-projection, unit scales).
IDENTITY_AT_INIT = {
    "lora": lambda: LoRAConfig(r=4, targets="q_proj,v_proj"),
    "lora_all": lambda: LoRAConfig(r=4, targets="all-linear", rslora=True),
    "houlsby": lambda: BottleneckConfig(placement="houlsby", reduction=4),
    "pfeiffer": lambda: BottleneckConfig(placement="pfeiffer", reduction=4),
    "ia3": lambda: IA3Config(),
}
METHOD_OF = {"lora": "lora", "lora_all": "lora", "houlsby": "adapters", "pfeiffer": "adapters", "ia3": "ia3",
             "prompt": "prompt", "prefix": "prefix", "prefix_plain": "prefix"}
ALL = {
    **IDENTITY_AT_INIT,
    "prompt": lambda: PromptTuningConfig(num_tokens=3),
    "prefix": lambda: PrefixTuningConfig(length=3, hidden=16),
    "prefix_plain": lambda: PrefixTuningConfig(length=3, reparameterize=False),
}


def attach(family: str, variant: str, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    # Frozen like the adapted model: SDPA picks its CPU kernel by whether inputs need gradients.
    base = make(family, seed).requires_grad_(False)
    model = apply_peft(make(family, seed), METHOD_OF[variant], ALL[variant]())
    return base, model


def perturb(model: torch.nn.Module, seed: int = 3, size: float = 0.3) -> None:
    """Move the adapter away from its identity init so that tests can see it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.add_(size * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("variant", sorted(ALL))
@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_invariants(family: str, variant: str, tmp_path) -> None:
    """One model per family x method, checked in turn (building tiny models dominates the cost):
    identity at init, only adapter parameters train and all get gradients, disable_adapters gives the
    exact base, save -> load reproduces outputs, parameters change under activation checkpointing."""
    base, model = attach(family, variant)
    x = inputs(family)
    if variant in IDENTITY_AT_INIT:
        torch.testing.assert_close(model(**x), base(**x), rtol=0, atol=1e-6, msg="not the base at init")

    perturb(model)  # a zero B would give A a zero gradient
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapter = {id(p) for p in adapter_parameters(model)}
    assert trainable and all(id(p) in adapter for p in model.parameters() if p.requires_grad)
    assert all(".adapters." in n or n.startswith("prefix_encoder.") for n in trainable), trainable
    model(**x).sum().backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {n}"
        else:
            assert p.grad is None, f"frozen {n} got a gradient"
    count = sum(p.numel() for p in adapter_parameters(model))
    assert trainable_report(model).startswith(f"trainable params: {count:,} of ")
    model.zero_grad(set_to_none=True)

    adapted = model(**x)
    with disable_adapters(model):
        assert torch.equal(model(**x), base(**x)), "disable_adapters is not the exact base"
    assert torch.equal(model(**x), adapted)
    assert not torch.allclose(adapted, base(**x), atol=1e-4), "the adapter has no effect"

    save_adapter(model, tmp_path / "a")
    loaded = load_adapter(make(family), tmp_path / "a")
    assert torch.equal(loaded(**x), adapted), "save -> load changed the outputs"

    model.train()
    enable_activation_checkpointing(model)
    before = snapshot_trainable(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for _ in range(2):
        opt.zero_grad()
        model(**x).float().pow(2).mean().backward()
        opt.step()
    check_params_changed(model, before, steps=2)


@pytest.mark.parametrize("variant", ["lora", "lora_all", "ia3"])
@pytest.mark.parametrize("family", FAMILIES)
def test_merged_equals_unmerged(family: str, variant: str) -> None:
    _, model = attach(family, variant)
    # A trained-sized update: a large random one on every layer of T5 (no attention scaling) would
    # amplify fp32 rounding beyond the tolerance without saying anything about merging.
    perturb(model, size=0.05)
    x = inputs(family)
    want = model(**x)
    assert not torch.allclose(want, make(family)(**x), atol=1e-5)
    merge_lora(model)
    torch.testing.assert_close(model(**x), want, rtol=1e-5, atol=1e-5)
    unmerge_lora(model)
    torch.testing.assert_close(model(**x), want, rtol=1e-5, atol=1e-5)
    merged = merge_and_unload(model)
    assert not any(".adapters." in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(**x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_fold_keeps_outputs(family: str) -> None:
    _, model = attach(family, "prefix")
    x = inputs(family)
    want = model(**x)
    fold_prefix(model)
    assert not hasattr(model, "prefix_encoder")
    torch.testing.assert_close(model(**x), want, rtol=0, atol=1e-6)
    assert all(n.endswith((".key", ".value")) for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("variant", ["prompt", "prefix"])
@pytest.mark.parametrize("family", FAMILIES)
def test_virtual_tokens_respect_padding(family: str, variant: str) -> None:
    """Left padding must not change a row: the mask is extended and positions follow the real tokens."""
    _, model = attach(family, variant)
    perturb(model)
    x = inputs(family)
    batched = second_row_outputs(family, model(**x), padded=True)
    alone = second_row_outputs(family, model(**second_row_alone(family, x)), padded=False)
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_from_text_equals_typing_the_text(family: str) -> None:
    """A prompt initialized from a text's embeddings behaves like that text typed before the input."""
    base = make(family).requires_grad_(False)
    text_ids = [5, 17, 33]
    model = apply_peft(make(family), "prompt", PromptTuningConfig(num_tokens=3), tokenizer=None)
    model.backbone.adapters["default"].weight.data.copy_(base.backbone.embed_tokens.weight[text_ids])
    x = inputs(family)
    b = x["input_ids"].shape[0]
    full = dict(x)
    full["input_ids"] = torch.cat([torch.tensor(text_ids).expand(b, -1), x["input_ids"]], dim=1)
    full["attention_mask"] = torch.cat([torch.ones(b, 3, dtype=torch.long), x["attention_mask"]], dim=1)
    if family in ENCODER_DECODERS:  # the decoder output, whose length the source prompt does not change
        got, want = model(**x), base(**full)
    else:  # per-token hidden states: a pooling head would pool a different first token
        got, want = model.backbone(**x), base.backbone(**full)[:, 3:]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
