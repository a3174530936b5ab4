"""Every Llama-style family decodes over the KV cache as it recomputes, and generates as transformers does."""

from __future__ import annotations

import pytest
import torch
from tiny_decoders import FAMILIES, WINDOW, hf_decoder

import plmkit
from plmkit.errors import ConfigError
from plmkit.interop.hf import load
from plmkit.models.cache import KVCache
from plmkit.models.gemma2 import Gemma2Config
from plmkit.models.generation import left_pad
from plmkit.models.layers import RopeScaling
from plmkit.models.llama import LlamaConfig
from plmkit.peft import apply_peft
from plmkit.peft.lora import LoRAConfig

torch.set_num_threads(1)
TOL = 1e-4
PROMPTS = [[5, 9, 2, 33, 7, 1], [12, 4], [40, 41, 42, 43, 44]]
# Dynamic NTK grows its base with the sequence and LongRoPE switches to its long factors past the pretraining
# context, so keys cached at a shorter length were rotated with other frequencies than a recompute uses
# (transformers' cache behaves the same): those two are checked against a recompute on full batches only.
LENGTH_DEPENDENT = ("llama-dynamic", "phi3-longrope")
DECODING = [n for n in FAMILIES if n != "llama-dynamic"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    cache = {}

    def get(name: str):
        if name not in cache:
            hf = hf_decoder(name)
            path = tmp_path_factory.mktemp(name)
            hf.save_pretrained(path)
            cache[name] = hf, load(path).model
        return cache[name]

    return get


@pytest.mark.parametrize("name", [n for n in FAMILIES if n not in LENGTH_DEPENDENT])
def test_cache_decode_equals_recompute(name, pair) -> None:
    """Prefill then one token at a time over the cache: every step's logits equal a full forward's."""
    _, model = pair(name)
    ids, mask = left_pad([[3, 8, 1, 7, 7, 2, 9, 11, 30, 31, 32, 33], [6, 5, 4, 3, 2, 1, 50]], 0)
    full = model(ids, mask)  # (B, T, V)
    cache = KVCache.for_model(model.config, 2, ids.shape[1], torch.float32, torch.device("cpu"))
    with torch.no_grad():
        steps = [model(ids[:, :5], mask[:, :5], cache=cache)]
        for t in range(5, ids.shape[1]):
            steps.append(model(ids[:, t : t + 1], mask[:, t : t + 1], cache=cache))
    real = mask.bool()
    torch.testing.assert_close(torch.cat(steps, 1)[real], full[real], atol=TOL, rtol=0)


@pytest.mark.parametrize("name", DECODING)
def test_greedy_generation_matches_transformers_past_the_window(name, pair) -> None:
    hf, model = pair(name)
    new = 3 * WINDOW
    ours = plmkit.generate(model, PROMPTS, max_new_tokens=new, pad_token_id=0)
    ids, mask = left_pad(PROMPTS, 0)
    ref = hf.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0)
    assert ours.tolist() == ref[:, ids.shape[1] :].tolist()
    if model.config.sliding_window is not None:  # past the window, the rows do not just repeat one token
        assert len(set(ours.flatten().tolist())) > 4


def test_windowed_layers_keep_only_the_window() -> None:
    mistral = LlamaConfig(
        vocab_size=11,
        d_model=16,
        num_layers=2,
        num_heads=2,
        d_ff=16,
        max_positions=64,
        sliding_window=WINDOW,
        model_type="mistral",
    )
    cache = KVCache.for_model(mistral, 1, 40, torch.float32, torch.device("cpu"))
    assert [k.shape[2] for k in cache.keys] == [WINDOW, WINDOW]
    gemma = Gemma2Config(
        vocab_size=11,
        d_model=16,
        num_layers=4,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        d_ff=16,
        max_positions=64,
        sliding_window=WINDOW,
    )
    cache = KVCache.for_model(gemma, 1, 40, torch.float32, torch.device("cpu"))
    assert [k.shape[2] for k in cache.keys] == [WINDOW, 40, WINDOW, 40]  # layers 0, 2 slide (Gemma 2)
    # A window as long as the generation never bites: the plain layout.
    cache = KVCache.for_model(mistral, 1, WINDOW, torch.float32, torch.device("cpu"))
    assert [k.shape[2] for k in cache.keys] == [WINDOW, WINDOW] and cache.ring_slots == {}


@pytest.mark.parametrize("name", ["gemma2", "qwen3"])
def test_inputs_embeds_equal_embedding_the_ids(name, pair) -> None:
    """Gemma's √D scale lives inside `embed_tokens`, so prompt tuning's inputs_embeds see the same vectors."""
    _, model = pair(name)
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        embeds = model.backbone.embed_tokens(ids)
        torch.testing.assert_close(model(inputs_embeds=embeds), model(ids), atol=0, rtol=0)


def test_a_cache_built_without_windows_still_applies_them(pair) -> None:
    """A `KVCache` made by hand (every slot kept) masks the window instead of ringing it."""
    _, model = pair("mistral")
    ids, mask = left_pad([[3, 8, 1, 7, 7, 2, 9, 11, 30, 31], [6, 5, 4, 3, 2, 1]], 0)
    cfg = model.config
    cache = KVCache(cfg.num_layers, 2, cfg.num_kv_heads, cfg.head_dim, ids.shape[1])
    with torch.no_grad():
        steps = [model(ids[:, :3], mask[:, :3], cache=cache)]
        steps += [model(ids[:, t : t + 1], mask[:, t : t + 1], cache=cache) for t in range(3, ids.shape[1])]
        full = model(ids, mask)
    real = mask.bool()
    torch.testing.assert_close(torch.cat(steps, 1)[real], full[real], atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["mistral", "gemma2"])
def test_static_shape_decode_step_traces_once(name, pair) -> None:
    """The ring cache keeps every decode step one static shape: dynamo traces the step once and replays it.

    (`backend="eager"` checks the graph capture in seconds; `generate(compile=True)` adds inductor on top,
    which on two CPU cores costs 30-90 s per model and was checked by hand: its tokens equal eager's.)
    """
    from torch._dynamo.testing import CompileCounter

    from plmkit.models.generation import decoder_step

    _, model = pair(name)
    ids, mask = left_pad(PROMPTS, 0)
    outputs, counter, traced = [], CompileCounter(), []
    torch._dynamo.reset()
    for compiled in (False, True):
        cache = KVCache.for_model(
            model.config, 3, ids.shape[1] + 3 * WINDOW, torch.float32, torch.device("cpu")
        )
        step = decoder_step(model, cache)
        decode = torch.compile(step, dynamic=False, backend=counter) if compiled else step
        with torch.no_grad():
            logits, steps = step(ids, mask), []
            for i in range(3 * WINDOW):
                token = logits.argmax(-1)
                steps.append(token)
                logits = decode(token[:, None], None)
                if compiled and i == 1:
                    traced.append(counter.frame_count)
        outputs.append(torch.stack(steps, 1))
    assert torch.equal(outputs[0], outputs[1])
    assert counter.frame_count == traced[0]  # no step after the second traced anything new


@pytest.mark.parametrize("name", ["llama-llama3", "qwen2", "qwen3", "mistral", "phi3", "gemma2"])
@pytest.mark.parametrize("targets", ["q_proj,v_proj", "all-linear"])
def test_peft_targets_work_unchanged_on_every_family(name, targets, pair) -> None:
    _, base = pair(name)
    ids = torch.tensor([PROMPTS[0]])
    before = base(ids)
    model = apply_peft(hf_loaded_copy(base), "lora", LoRAConfig(targets=targets, r=2))
    wrapped = [n for n, m in model.named_modules() if hasattr(m, "base") and not n.endswith(".base")]
    per_layer = 2 if targets == "q_proj,v_proj" else 7  # q v  |  q k v o gate up down
    assert len(wrapped) == per_layer * base.config.num_layers
    torch.testing.assert_close(model(ids), before, atol=TOL, rtol=0)  # LoRA's B starts at zero


def hf_loaded_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: LlamaConfig(d_model=32, num_heads=4, num_kv_heads=3),
            r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)",
        ),
        (
            lambda: LlamaConfig(d_model=30, num_heads=4),
            r"d_model \(30\) must be divisible by num_heads \(4\)",
        ),
        (
            lambda: LlamaConfig(max_positions=128, sliding_window=256),
            r"sliding_window \(256\) is larger than the context max_positions \(128\)",
        ),
        (
            lambda: LlamaConfig(num_layers=2, sliding_window=4, sliding_layers=(0, 5)),
            r"layer 5 outside 0\.\.1",
        ),
        (
            lambda: RopeScaling(rope_type="su"),
            r"RoPE type 'su' is not supported \(supported: default, linear, dynamic",
        ),
        (lambda: RopeScaling(rope_type="llama3"), r"RoPE llama3 needs a factor"),
        (
            lambda: LlamaConfig(model_type="falcon"),
            r"model_type 'falcon' is not one of llama, mistral, qwen2",
        ),
        (
            lambda: Gemma2Config(num_heads=8, num_kv_heads=3),
            r"Gemma2Config.num_heads \(8\) must be a multiple",
        ),
        (lambda: Gemma2Config(max_positions=100), r"sliding_window \(4096\) is larger than the context"),
    ],
)
def test_bad_configs_give_one_line_errors(build, message) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        build()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["qwen3", "gemma2"])
def test_lora_exports_to_peft_on_the_new_families(name, pair, tmp_path) -> None:
    import peft

    from plmkit.interop.peft_format import export_peft_lora
    from plmkit.peft import adapter_parameters

    hf, base = pair(name)
    hf.save_pretrained(tmp_path / "base")
    model = apply_peft(hf_loaded_copy(base), "lora", LoRAConfig(targets="q_proj,v_proj,down_proj", r=2))
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.normal_(0, 0.2)
    export_peft_lora(model, tmp_path / "adapter")
    reference = type(hf).from_pretrained(tmp_path / "base").eval()
    reference = peft.PeftModel.from_pretrained(reference, tmp_path / "adapter").eval()
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        torch.testing.assert_close(reference(input_ids=ids).logits, model(ids), atol=TOL, rtol=0)
        assert not torch.allclose(base(ids), model(ids), atol=1e-3)
