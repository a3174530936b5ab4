"""Tiny random transformers decoders of every Llama-style family plmkit loads (shared by the parity tests).

Each builder returns a transformers causal LM with random weights whose biases, norm weights and
projections are scaled up, so that every family option (biases, q/k norms, soft-capping, windows,
RoPE scaling) moves the logits by far more than the 1e-4 tolerance.
"""

from __future__ import annotations

import torch
import transformers

V = 97
COMMON = dict(
    vocab_size=V,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
WINDOW = 4  # shorter than every test sequence

FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("Llama", dict(rope_parameters={"rope_type": "default", "rope_theta": 500.0})),
    "llama-linear": (
        "Llama",
        dict(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 500.0}),
    ),
    # A context of 4 so that the 12-token batch grows the base.
    "llama-dynamic": (
        "Llama",
        dict(
            max_position_embeddings=4,
            rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 500.0},
        ),
    ),
    "llama-yarn": (
        "Llama",
        dict(
            rope_parameters={
                "rope_type": "yarn",
                "factor": 4.0,
                "rope_theta": 500.0,
                "original_max_position_embeddings": 16,
            }
        ),
    ),
    "llama-llama3": (
        "Llama",
        dict(
            rope_parameters={
                "rope_type": "llama3",
                "factor": 8.0,
                "rope_theta": 500.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            }
        ),
    ),
    "qwen2": ("Qwen2", dict(tie_word_embeddings=True)),
    # Qwen's window applies from layer max_window_layers on, and only with use_sliding_window.
    "qwen2-window": ("Qwen2", dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)),
    "qwen3": ("Qwen3", dict(head_dim=16)),
    "mistral": ("Mistral", dict(sliding_window=WINDOW)),
    "phi3": ("Phi3", dict(sliding_window=WINDOW, pad_token_id=0)),
    "phi3-longrope": (
        "Phi3",
        dict(
            pad_token_id=0,
            max_position_embeddings=32,
            original_max_position_embeddings=8,
            rope_parameters={
                "rope_type": "longrope",
                "short_factor": [1.0, 1.5, 2.0, 3.0],
                "long_factor": [2.0, 3.0, 5.0, 8.0],
            },
        ),
    ),
    "gemma2": (
        "Gemma2",
        dict(
            head_dim=8,
            sliding_window=WINDOW,
            query_pre_attn_scalar=8,
            pad_token_id=0,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
        ),
    ),
    "gemma2-untied": (
        "Gemma2",
        dict(
            head_dim=8,
            sliding_window=WINDOW,
            pad_token_id=0,
            tie_word_embeddings=False,
            attn_logit_softcapping=None,
            final_logit_softcapping=None,
        ),
    ),
}


def hf_decoder(name: str) -> transformers.PreTrainedModel:
    prefix, extra = FAMILIES[name]
    torch.manual_seed(0)
    config = getattr(transformers, prefix + "Config")(**{**COMMON, **extra})
    model = getattr(transformers, prefix + "ForCausalLM")(config)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if "norm" in key or key.endswith("bias"):
                param.normal_(0.0, 0.5)
            elif "proj" in key or "lm_head" in key or ("embed" in key and prefix != "Gemma2"):
                param.mul_(6.0)  # Gemma 2 already scales its embeddings by √D
    return model.eval()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """(3, 12) ids and a mask with two left-padded rows."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :1] = 0
    return ids, mask
