"""GPT-2 family invariants and the causal-LM loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from plmkit.errors import ConfigError
from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.models.heads import is_tied
from plmkit.models.llama import LlamaConfig, llama_lm
from plmkit.objectives.clm import causal_lm_loss, clm_labels


def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "gpt2": gpt2_lm(GPT2Config(vocab_size=50, max_positions=32, d_model=32, num_layers=3, num_heads=4)),
        "llama": llama_lm(LlamaConfig(vocab_size=50, max_positions=32, d_model=32, num_layers=3, num_heads=4,
                                      num_kv_heads=2, d_ff=40)),
    }


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_no_causal_leakage_and_inputs_embeds(family: str) -> None:
    model = models()[family].eval()
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 50
    with torch.no_grad():
        a, b = model(ids), model(changed)
        torch.testing.assert_close(a[:, :7], b[:, :7])
        assert not torch.allclose(a[:, 7:], b[:, 7:])
        embeds = model.backbone.embed_tokens(ids)
        torch.testing.assert_close(model(inputs_embeds=embeds), a)


def test_module_names_for_peft() -> None:
    names = {n.rsplit(".", 1)[-1] for n, _ in models()["llama"].named_modules()}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "attn_norm",
            "mlp_norm", "embed_tokens", "lm_head"} <= names
    gpt_names = {n.rsplit(".", 1)[-1] for n, _ in models()["gpt2"].named_modules()}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "embed_positions"} <= gpt_names


def test_gpt2_init_and_tying() -> None:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=500, max_positions=64, d_model=128, num_layers=4, num_heads=4)
    model = gpt2_lm(cfg)
    assert is_tied(model.head, model.backbone.embed_tokens)
    block = model.backbone.layers[0]
    assert block.attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.attn.o_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert block.mlp.down_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    untied = gpt2_lm(GPT2Config(vocab_size=50, d_model=32, num_layers=1, num_heads=4, tie_embeddings=False))
    assert not is_tied(untied.head, untied.backbone.embed_tokens)


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"d_model \(30\) must be divisible by num_heads \(4\)"):
        GPT2Config(d_model=30, num_heads=4)
    with pytest.raises(ConfigError, match=r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)"):
        LlamaConfig(d_model=32, num_heads=4, num_kv_heads=3)


def test_clm_labels_and_loss_golden() -> None:
    ids = torch.tensor([[0, 0, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    labels = clm_labels(ids, mask)
    assert labels.tolist() == [[-100, 5, 6, 7, -100]]
    logits = torch.zeros(1, 5, 8)
    logits[0, 1, 5] = math.log(3.0)  # p(5) = 3 / 10 at position 1
    loss_sum, n = causal_lm_loss(logits, labels)
    assert int(n) == 3
    expected = -math.log(3 / 10) + 2 * math.log(8)
    assert loss_sum.item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(loss_sum / n, F.cross_entropy(logits[0, 1:4], labels[0, 1:4]))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_prefix_slot_full_equals_cached_and_stays_causal(family: str) -> None:
    from plmkit.models.cache import KVCache
    from plmkit.models.layers import Prefix

    model = models()[family].eval()
    cfg = model.config
    for block in model.backbone.layers:
        block.attn.prefix = Prefix(cfg.num_kv_heads, 3, cfg.head_dim)
        torch.nn.init.normal_(block.attn.prefix.key)
        torch.nn.init.normal_(block.attn.prefix.value)
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache.for_model(cfg, 2, 9, torch.float32, torch.device("cpu"))
        parts = [model(ids[:, :4], cache=cache)] + [model(ids[:, i:i + 1], cache=cache) for i in range(4, 9)]
        torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)
        changed = ids.clone()
        changed[:, 5:] = (changed[:, 5:] + 1) % 50
        torch.testing.assert_close(model(changed)[:, :5], full[:, :5])
        # The prefix is visible to the first token: removing it changes position 0.
        for block in model.backbone.layers:
            block.attn.prefix = None
        assert not torch.allclose(model(ids)[:, 0], full[:, 0])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_all_ones_mask_equals_no_mask_and_padding_still_masks(family: str) -> None:
    # An unpadded mask takes SDPA's causal path; one padded row must still take the explicit mask.
    model = models()[family].eval()
    ids = torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(ids)
        torch.testing.assert_close(model(ids, torch.ones(2, 10, dtype=torch.long)), plain)
        mask = torch.ones(2, 10, dtype=torch.long)
        mask[1, :3] = 0
        padded = model(ids, mask)
        alone = model(ids[1:, 3:])
    torch.testing.assert_close(padded[0], plain[0])
    torch.testing.assert_close(padded[1, 3:], alone[0])


def test_extend_positions_interpolates_the_learned_table():
    from plmkit.models.gpt import extend_positions

    torch.manual_seed(0)
    model = gpt2_lm(GPT2Config(vocab_size=50, max_positions=16, d_model=32, num_layers=1, num_heads=2)).eval()
    old = model.backbone.embed_positions.weight.detach().clone()
    ids = torch.randint(0, 50, (2, 16))
    before = model(ids)
    extend_positions(model, 31)  # 2 * 16 - 1: every old position lands on an even new one
    new = model.backbone.embed_positions.weight
    assert model.config.max_positions == 31 and new.shape == (31, 32)
    torch.testing.assert_close(new[::2], old)
    torch.testing.assert_close(new[1::2], (old[:-1] + old[1:]) / 2)
    assert model(torch.randint(0, 50, (1, 31))).shape == (1, 31, 50)  # reads past the old 16
    with pytest.raises(ConfigError, match="fewer than the 31"):
        extend_positions(model, 20)
    torch.manual_seed(0)
    same = gpt2_lm(GPT2Config(vocab_size=50, max_positions=16, d_model=32, num_layers=1, num_heads=2)).eval()
    torch.testing.assert_close(extend_positions(same, 16)(ids), before)  # the same size changes nothing
