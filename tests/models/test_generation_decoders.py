"""Decoding over the KV cache: equals full recomputation, per-row independence, transformers parity."""

from __future__ import annotations

import pytest
import torch
import transformers

import plmkit
from plmkit.errors import ConfigError
from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.models.llama import LlamaConfig, llama_lm

V = 61


def tiny(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "gpt2":
        model = gpt2_lm(GPT2Config(vocab_size=V, max_positions=48, d_model=32, num_layers=2, num_heads=4))
    else:
        cfg = LlamaConfig(vocab_size=V, max_positions=48, d_model=32, num_layers=2, num_heads=4,
                          num_kv_heads=2, d_ff=48)
        model = llama_lm(cfg)
    # Larger weights than the init give peaked, varied distributions: greedy paths are not all one token.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    return model.eval()


def recompute_greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


PROMPTS = [[5, 9, 2, 33, 7, 1], [12, 4], [40, 41, 42, 43]]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cache_equals_recompute_and_rows_independent(family: str) -> None:
    model = tiny(family)
    batched = plmkit.generate(model, PROMPTS, max_new_tokens=12)
    assert batched.shape == (3, 12)
    for row, prompt in enumerate(PROMPTS):
        expected = recompute_greedy(model, prompt, 12)
        assert plmkit.generate(model, [prompt], max_new_tokens=12)[0].tolist() == expected
        assert batched[row].tolist() == expected


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cache_logits_equal_full_forward(family: str) -> None:
    from plmkit.models.cache import KVCache

    model = tiny(family)
    ids = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    with torch.no_grad():
        full = model(ids, mask)
        cache = KVCache.for_model(model.config, 2, 8, torch.float32, torch.device("cpu"))
        first = model(ids[:, :5], mask[:, :5], cache=cache)
        rest = [model(ids[:, i:i + 1], cache=cache) for i in range(5, 8)]
    got = torch.cat([first, *rest], 1)
    real = mask.bool()
    torch.testing.assert_close(got[real], full[real], atol=1e-5, rtol=0)


def test_eos_stops_each_row_and_pads() -> None:
    model = tiny("gpt2")
    free = plmkit.generate(model, PROMPTS, max_new_tokens=10)
    eos = int(free[0, 2])  # row 0 emits this token third
    out = plmkit.generate(model, PROMPTS, max_new_tokens=10, eos_token_id=eos, pad_token_id=60)
    for row in range(3):
        tokens = free[row].tolist()
        if eos in tokens:
            cut = tokens.index(eos) + 1
            assert out[row, :cut].tolist() == tokens[:cut]
            assert set(out[row, cut:].tolist()) <= {60}
        else:
            assert out[row, : len(tokens)].tolist() == tokens


def test_streamer_sees_every_token() -> None:
    model = tiny("llama")
    seen: list[torch.Tensor] = []
    out = plmkit.generate(model, PROMPTS[:1], max_new_tokens=6, streamer=seen.append)
    assert torch.stack(seen, 1).tolist() == out.tolist()


def test_sampling_seeded_and_filters() -> None:
    model = tiny("gpt2")
    a = plmkit.generate(model, PROMPTS, max_new_tokens=8, do_sample=True, top_k=5, top_p=0.9,
                        temperature=0.7, generator=torch.Generator().manual_seed(3))
    b = plmkit.generate(model, PROMPTS, max_new_tokens=8, do_sample=True, top_k=5, top_p=0.9,
                        temperature=0.7, generator=torch.Generator().manual_seed(3))
    assert a.tolist() == b.tolist()
    # top_k=1 sampling is greedy.
    k1 = plmkit.generate(model, PROMPTS, max_new_tokens=8, do_sample=True, top_k=1,
                         generator=torch.Generator().manual_seed(0))
    assert k1.tolist() == plmkit.generate(model, PROMPTS, max_new_tokens=8).tolist()


def test_top_p_keeps_smallest_nucleus() -> None:
    from plmkit.models.generation import filter_top_p

    scores = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = filter_top_p(scores, 0.75).isfinite().tolist()
    assert kept == [[True, True, False, False]]


def test_prompt_longer_than_context() -> None:
    model = tiny("gpt2")
    msg = "prompt of 40 tokens \\+ max_new_tokens=10 exceeds the model's context window of 48 tokens"
    with pytest.raises(ConfigError, match=msg):
        plmkit.generate(model, [[1] * 40], max_new_tokens=10)


def _to_hf(model: torch.nn.Module, tmp_path) -> transformers.PreTrainedModel:
    plmkit.save_hf(model, tmp_path)
    return transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()


def _hf_new(hf, prompts, **kw) -> list[list[int]]:
    ids, mask = plmkit.models.generation.left_pad(prompts, 0)
    out = hf.generate(ids, attention_mask=mask, pad_token_id=0, do_sample=False, **kw)
    return out[:, ids.shape[1]:].tolist()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_and_repetition_penalty_match_transformers(family: str, tmp_path) -> None:
    model = tiny(family)
    hf = _to_hf(model, tmp_path)
    ours = plmkit.generate(model, PROMPTS, max_new_tokens=10, pad_token_id=0)
    assert ours.tolist() == _hf_new(hf, PROMPTS, max_new_tokens=10)
    ours = plmkit.generate(model, PROMPTS, max_new_tokens=10, repetition_penalty=1.5, pad_token_id=0)
    assert ours.tolist() == _hf_new(hf, PROMPTS, max_new_tokens=10, repetition_penalty=1.5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("early_stopping", [False, True])
def test_beam_search_matches_transformers(family: str, early_stopping: bool, tmp_path) -> None:
    model = tiny(family)
    hf = _to_hf(model, tmp_path)
    free = plmkit.generate(model, PROMPTS, max_new_tokens=8)
    eos = int(free[1, 1])  # a token the beams are likely to meet, so hypotheses finish early
    kw = dict(max_new_tokens=8, num_beams=3, length_penalty=0.8, early_stopping=early_stopping)
    for prompt in PROMPTS:
        ours = plmkit.generate(model, [prompt], eos_token_id=eos, pad_token_id=0, **kw)[0].tolist()
        ref = _hf_new(hf, [prompt], eos_token_id=eos, **kw)[0]
        assert ours == ref[: len(ours)] and set(ref[len(ours):]) <= {0}


def recompute_greedy_cropped(model: torch.nn.Module, prompt: list[int], n: int, context: int) -> list[int]:
    """nanoGPT's sampler: every step recomputes the last `context` tokens without a cache."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids[-context:]]))[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_sliding_window_equals_cropped_recompute(family: str) -> None:
    model = tiny(family)
    prompts = [[5, 9, 2, 33, 7, 1], [12, 4], [3] * 50]  # the last is longer than the window itself
    out = plmkit.generate(model, prompts, max_new_tokens=60, sliding_window=True)
    assert out.shape == (3, 60)
    for row, prompt in enumerate(prompts):
        expected = recompute_greedy_cropped(model, prompt, 60, context=48)
        alone = plmkit.generate(model, [prompt], max_new_tokens=60, sliding_window=True)
        assert alone[0].tolist() == expected
        assert out[row].tolist() == expected
    # Inside the window nothing changes.
    inside = plmkit.generate(model, PROMPTS, max_new_tokens=12, sliding_window=True)
    assert inside.tolist() == plmkit.generate(model, PROMPTS, max_new_tokens=12).tolist()


def test_sliding_window_beam_search_and_sampling_run_past_the_window() -> None:
    model = tiny("gpt2")
    from plmkit.models.generation import beam_search

    class Recompute:  # beams over nanoGPT's cropped recompute, no cache
        ids = torch.zeros(2, 0, dtype=torch.long)

        def step(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
            self.ids = torch.cat([self.ids, tokens], 1)
            return model(self.ids[:, -48:])[:, -1]

        def reorder(self, rows: torch.Tensor) -> None:
            self.ids = self.ids[rows]

    beams = plmkit.generate(model, [[5, 9, 2]], max_new_tokens=60, num_beams=2, sliding_window=True)
    ref = Recompute()
    with torch.no_grad():
        expected = beam_search(ref.step, ref.reorder, torch.tensor([[5, 9, 2]] * 2), None, 60, 2)
    assert beams.shape[1] == 60 and beams.tolist() == expected.tolist()
    sampled = plmkit.generate(model, [[5, 9, 2]], max_new_tokens=60, do_sample=True, sliding_window=True,
                              generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (1, 60) and int(sampled.max()) < V
