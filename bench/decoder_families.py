"""Greedy generation past the sliding window: plmkit vs transformers on Mistral- and Gemma-2-shaped models.

Random weights (the speed does not depend on them), fp32, one thread each, a 32-token prompt and 256 new
tokens with a 64-token window, so most steps run past the window. Runs alternate plmkit and transformers
(several repeats; median and spread printed). Also printed: the KV cache plmkit holds (windowed layers keep
a ring of W slots) against a cache of every position, and that both libraries produced the same tokens.

    python bench/decoder_families.py            # or: python bench/run.py decoder_families
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import transformers  # noqa: E402

import plmkit  # noqa: E402
from bench.result import BenchResult  # noqa: E402
from plmkit.models.cache import KVCache  # noqa: E402

WINDOW, PROMPT, NEW = 64, 32, 256
SHAPE = dict(
    vocab_size=2048,
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    sliding_window=WINDOW,
)
FAMILIES = {
    "mistral": lambda: transformers.MistralForCausalLM(transformers.MistralConfig(**SHAPE)),
    "gemma2": lambda: transformers.Gemma2ForCausalLM(
        transformers.Gemma2Config(**SHAPE, head_dim=32, query_pre_attn_scalar=32, pad_token_id=0)
    ),
}


def tokens_per_s(run) -> float:  # noqa: ANN001 - a no-argument callable
    start = time.perf_counter()
    run()
    return NEW / (time.perf_counter() - start)


def cache_bytes(cache: KVCache) -> int:
    return sum(k.numel() * k.element_size() for k in cache.keys + cache.values)


def family_case(name: str, repeats: int = 3) -> list[BenchResult]:
    torch.manual_seed(0)
    hf = FAMILIES[name]().eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = plmkit.load(tmp).model
    prompt = torch.randint(1, SHAPE["vocab_size"], (1, PROMPT), generator=torch.Generator().manual_seed(0))
    ours_run = lambda: plmkit.generate(ours, prompt, max_new_tokens=NEW, pad_token_id=0)
    hf_run = lambda: hf.generate(
        prompt, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0
    )
    with torch.inference_mode():
        same = ours_run()[0].tolist() == hf_run()[0, PROMPT:].tolist()
        times: dict[str, list[float]] = {"plmkit": [], "transformers": []}
        for _ in range(repeats):
            times["plmkit"].append(tokens_per_s(ours_run))
            times["transformers"].append(tokens_per_s(hf_run))
    ring = KVCache.for_model(ours.config, 1, PROMPT + NEW, torch.float32, torch.device("cpu"))
    full = KVCache(ours.config.num_layers, 1, ours.config.num_kv_heads, ours.config.head_dim, PROMPT + NEW)
    for lib, values in times.items():
        print(
            f"{name} {lib}: {statistics.median(values):.0f} tokens/s (min {min(values):.0f}, "
            f"max {max(values):.0f}, {repeats} runs)"
        )
    print(
        f"{name} KV cache: {cache_bytes(ring) / 1e6:.2f} MB with rings vs {cache_bytes(full) / 1e6:.2f} MB "
        f"for every position; greedy tokens equal to transformers: {same}"
    )
    note = f"same tokens: {same}; measured under load"
    return [
        BenchResult(
            f"{name}_generate",
            "speed",
            statistics.median(times["plmkit"]),
            statistics.median(times["transformers"]),
            "tokens/s",
            True,
            note,
        ),
        BenchResult(
            f"{name}_kv_cache",
            "memory",
            cache_bytes(ring) / 1e6,
            cache_bytes(full) / 1e6,
            "MB",
            False,
            "plmkit ring vs a cache of every position",
        ),
    ]


def case() -> list[BenchResult]:
    torch.set_num_threads(1)
    return family_case("mistral") + family_case("gemma2")


if __name__ == "__main__":
    for row in case():
        print(f"{row.case} {row.metric}: plmkit/reference = {row.ratio:.2f}")
