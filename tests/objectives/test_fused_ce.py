"""Fused linear cross-entropy: the loss and gradients of the unfused head + loss, never the full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from shared_paths import require_data
from torch.utils._python_dispatch import TorchDispatchMode

from plmkit.errors import ConfigError
from plmkit.objectives.clm import causal_lm_loss
from plmkit.objectives.fused_ce import (
    fused_lm_loss,
    linear_cross_entropy,
    linear_token_logprobs,
    lm_projection,
    model_lm_loss,
)

torch.set_num_threads(1)


def rel_close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    """max |a - b| <= tol * max |b|: relative to the tensor's scale, so near-zero entries do not dominate."""
    assert a.shape == b.shape
    scale = b.abs().max().clamp(min=1e-12)
    err = (a - b).abs().max() / scale
    assert err <= tol, f"relative error {float(err):.2e} > {tol}"


def both(hidden, weight, bias, labels, *, smoothing=0.0, reduction="sum", chunk_size=None):
    """(fused loss, its grads) and (unfused loss, its grads) on copies of the same leaves."""
    results = []
    for fused in (True, False):
        h = hidden.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        b = None if bias is None else bias.clone().requires_grad_()
        if fused:
            loss = linear_cross_entropy(h, w, labels, b, label_smoothing=smoothing, reduction=reduction,
                                        chunk_size=chunk_size)
        else:
            logits = F.linear(h, w, b)
            loss = F.cross_entropy(logits.reshape(-1, w.shape[0]), labels.reshape(-1), ignore_index=-100,
                                   label_smoothing=smoothing, reduction=reduction)
        loss.backward()
        results.append((loss.detach(), h.grad, w.grad, None if b is None else b.grad))
    return results


def random_case(n=3, t=37, d=16, v=211, bias=True, ignore_share=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, t, d, generator=g)
    weight = torch.randn(v, d, generator=g) * 0.3
    b = torch.randn(v, generator=g) if bias else None
    labels = torch.randint(0, v, (n, t), generator=g)
    labels[torch.rand(n, t, generator=g) < ignore_share] = -100
    return hidden, weight, b, labels


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_random_batch_matches_unfused(smoothing, reduction, chunk_size):
    hidden, weight, bias, labels = random_case()
    fused, ref = both(hidden, weight, bias, labels, smoothing=smoothing, reduction=reduction,
                      chunk_size=chunk_size)
    for a, b in zip(fused, ref):
        rel_close(a, b)


def test_no_bias_no_ignored_and_all_ignored():
    hidden, weight, _, labels = random_case(bias=False, ignore_share=0.0, seed=1)
    fused, ref = both(hidden, weight, None, labels, chunk_size=5)
    for a, b in zip(fused[:3], ref[:3]):
        rel_close(a, b)
    labels = torch.full_like(labels, -100)
    h = hidden.clone().requires_grad_()
    loss = linear_cross_entropy(h, weight, labels)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(h.grad.abs().max()) == 0.0
    assert torch.isnan(linear_cross_entropy(hidden, weight, labels, reduction="mean"))


def test_backward_scales_with_the_incoming_gradient():
    # The gradients are made in forward for a unit loss; backward must scale them (loss * 3, loss / n).
    hidden, weight, bias, labels = random_case(seed=2)
    h1, h2 = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    (3.0 * linear_cross_entropy(h1, weight, labels, bias)).backward()
    (3.0 * F.cross_entropy(F.linear(h2, weight, bias).reshape(-1, weight.shape[0]), labels.reshape(-1),
                           reduction="sum")).backward()
    rel_close(h1.grad, h2.grad)


def test_tied_weight_gets_both_gradients():
    # GPT-2 ties the output matrix to the embedding: its gradient is the embedding's plus the head's.
    g = torch.Generator().manual_seed(3)
    emb = torch.nn.Embedding(97, 12)
    ids = torch.randint(0, 97, (2, 9), generator=g)
    labels = torch.randint(0, 97, (2, 9), generator=g)
    grads = []
    for fused in (True, False):
        emb.weight.grad = None
        hidden = torch.tanh(emb(ids))
        if fused:
            loss = linear_cross_entropy(hidden, emb.weight, labels)
        else:
            loss = F.cross_entropy(F.linear(hidden, emb.weight).reshape(-1, 97), labels.reshape(-1),
                                   reduction="sum")
        loss.backward()
        grads.append(emb.weight.grad.clone())
    rel_close(grads[0], grads[1])


def test_no_grad_evaluation_gives_the_same_value():
    hidden, weight, bias, labels = random_case(seed=4)
    with torch.no_grad():
        fused = linear_cross_entropy(hidden, weight, labels, bias)
    ref = F.cross_entropy(F.linear(hidden, weight, bias).reshape(-1, weight.shape[0]), labels.reshape(-1),
                          reduction="sum")
    rel_close(fused, ref)


def test_fused_lm_loss_is_causal_lm_loss():
    hidden, weight, bias, labels = random_case(seed=5)
    loss_sum, n = fused_lm_loss(hidden, weight, labels, bias)
    ref_sum, ref_n = causal_lm_loss(F.linear(hidden, weight, bias), labels)
    rel_close(loss_sum, ref_sum)
    assert int(n) == int(ref_n) == int((labels != -100).sum())


def test_token_logprobs_match_log_softmax():
    hidden, weight, bias, labels = random_case(ignore_share=0.0, seed=6)
    go = torch.randn(labels.shape, generator=torch.Generator().manual_seed(7))  # per-token weights
    out = []
    for fused in (True, False):
        h, w, b = (x.clone().requires_grad_() for x in (hidden, weight, bias))
        if fused:
            logps = linear_token_logprobs(h, w, labels, b, chunk_size=10)
        else:
            logps = F.linear(h, w, b).log_softmax(-1).gather(-1, labels[..., None]).squeeze(-1)
        (logps * go).sum().backward()
        out.append((logps.detach(), h.grad, w.grad, b.grad))
    for a, b in zip(*out):
        rel_close(a, b)
    with pytest.raises(ConfigError, match="token ids"):
        linear_token_logprobs(hidden, weight, torch.full_like(labels, -100))


def test_bad_shapes_are_one_line_errors():
    hidden, weight, bias, labels = random_case()
    with pytest.raises(ConfigError, match="hidden width"):
        linear_cross_entropy(hidden[..., :5], weight, labels)
    with pytest.raises(ConfigError, match="labels shape"):
        linear_cross_entropy(hidden, weight, labels[:, :3])
    with pytest.raises(ConfigError, match="reduction"):
        linear_cross_entropy(hidden, weight, labels, reduction="none")


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an aten op returns (forward and backward alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for x in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.numel())
        return out


def largest_tensor(step) -> int:  # noqa: ANN001
    mode = LargestTensor()
    with mode:
        step()
    return mode.largest


def test_the_full_logits_are_never_allocated():
    # A huge vocabulary with few tokens: 64 x 2^19 logits = 33.5M elements (134 MB in fp32).
    n, d, v = 64, 8, 2**19
    g = torch.Generator().manual_seed(8)
    hidden = torch.randn(n, d, generator=g, requires_grad=True)
    weight = (torch.randn(v, d, generator=g) * 0.1).requires_grad_()
    labels = torch.randint(0, v, (n,), generator=g)

    def fused() -> None:
        linear_cross_entropy(hidden, weight, labels).backward()

    def unfused() -> None:
        F.cross_entropy(F.linear(hidden, weight), labels, reduction="sum").backward()

    assert largest_tensor(unfused) >= n * v  # the probe sees the logits when they exist
    assert largest_tensor(fused) < n * v // 2
    hidden.grad = weight.grad = None
    assert largest_tensor(lambda: linear_token_logprobs(hidden, weight, labels).sum().backward()) < n * v // 2


def tiny_models():
    from plmkit.models.bart import BartConfig, bart_lm
    from plmkit.models.bert import BertConfig, bert_mlm
    from plmkit.models.gpt import GPT2Config, gpt2_lm
    from plmkit.models.llama import LlamaConfig, llama_lm
    from plmkit.models.t5 import T5Config, t5_lm

    torch.manual_seed(0)
    return {
        "gpt2": gpt2_lm(GPT2Config(vocab_size=101, max_positions=64, d_model=16, num_layers=2, num_heads=2)),
        "llama": llama_lm(LlamaConfig(vocab_size=101, max_positions=64, d_model=16, num_layers=2, num_heads=2,
                                      d_ff=32)),
        "bert": bert_mlm(BertConfig(vocab_size=101, d_model=16, num_layers=2, num_heads=2, d_ff=32,
                                    max_positions=64)),
        "t5": t5_lm(T5Config(vocab_size=101, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2)),
        "bart": bart_lm(BartConfig(vocab_size=101, max_positions=64, d_model=16, num_layers=2, num_heads=2,
                                   d_ff=32)),
    }


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert", "t5", "bart"])
def test_model_lm_loss_matches_the_logits_path(family):
    model = tiny_models()[family].eval()  # no dropout, so both paths see the same network
    assert lm_projection(model) is not None
    g = torch.Generator().manual_seed(9)
    ids = torch.randint(3, 101, (2, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0
    labels = torch.randint(0, 101, (2, 11), generator=g)
    labels[torch.rand(2, 11, generator=g) < 0.3] = -100
    seq2seq = family in ("t5", "bart")
    extra = {"decoder_input_ids": torch.randint(3, 101, (2, 11), generator=g)} if seq2seq else {}
    with torch.no_grad():  # a nonzero BART output bias, so the bias path is exercised
        if model.head.lm_head.bias is not None:
            model.head.lm_head.bias.normal_(generator=g)
    grads = []
    losses = []
    for fused in (True, False):
        model.zero_grad(set_to_none=True)
        if fused:
            loss_sum, n = model_lm_loss(model, labels, ids, mask, **extra)
        else:
            loss_sum, n = causal_lm_loss(model(ids, mask, **extra), labels)
        loss_sum.backward()
        losses.append((loss_sum.detach(), n))
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    rel_close(losses[0][0], losses[1][0])
    assert int(losses[0][1]) == int(losses[1][1])
    assert grads[0].keys() == grads[1].keys()
    # Relative to the largest gradient of the model: some parameters' gradients are zero up to rounding
    # (1e-11: a bias whose gradient cancels exactly), where any relative error is noise.
    scale = max(float(g.abs().max()) for g in grads[1].values())
    for k in grads[1]:
        err = float((grads[0][k] - grads[1][k]).abs().max())
        assert err <= 1e-5 * max(float(grads[1][k].abs().max()), 1e-3 * scale), k


def test_unknown_head_falls_back_to_logits():
    model = tiny_models()["gpt2"]

    class Wrapped(torch.nn.Module):  # not a TaskModel: the plain path
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask=None):  # noqa: ANN001, ANN201
            return self.inner(input_ids, attention_mask)

    wrapped = Wrapped()
    assert lm_projection(wrapped) is None
    ids = torch.randint(0, 101, (2, 8), generator=torch.Generator().manual_seed(10))
    a, _ = model_lm_loss(wrapped, ids, ids)
    b, _ = causal_lm_loss(model(ids), ids)
    rel_close(a.detach(), b.detach())


def test_real_batch_from_tiny_shakespeare():
    from plmkit.data.tokenizer import load_tokenizer
    from plmkit.models.gpt import GPT2Config, gpt2_lm
    from plmkit.objectives.clm import clm_labels

    tok = load_tokenizer(require_data("tokenizers", "gpt2"))
    lines = require_data("tiny_shakespeare", "input.txt").read_text(encoding="utf-8").splitlines()
    rows = [tok.encode(line, add_special_tokens=False)[:24] for line in lines[:40] if line.strip()][:6]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    labels = clm_labels(ids, mask)
    torch.manual_seed(0)
    model = gpt2_lm(GPT2Config(vocab_size=tok.vocab_size, max_positions=64, d_model=32, num_layers=1,
                               num_heads=2))
    hidden = model.backbone(ids, mask).detach()
    weight = model.head.lm_head.weight.detach()
    for smoothing in (0.0, 0.1):
        fused, ref = both(hidden, weight, None, labels, smoothing=smoothing, reduction="mean")
        for a, b in zip(fused[:3], ref[:3]):
            rel_close(a, b)


def test_alignment_sequence_logprobs_take_the_fused_path(monkeypatch):
    from plmkit.alignment import logprobs
    from plmkit.alignment.logprobs import gather_logprobs, sequence_logprobs

    model = tiny_models()["gpt2"].eval()
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(0, 101, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    response = torch.zeros_like(ids)
    response[:, 6:] = 1
    calls = []
    monkeypatch.setattr(logprobs, "linear_token_logprobs",
                        lambda *a, **k: calls.append(1) or linear_token_logprobs(*a, **k))
    fused = sequence_logprobs(model, ids, mask, response)
    fused.sum().backward()
    fused_grad = model.head.lm_head.weight.grad.clone()
    model.zero_grad(set_to_none=True)
    logits = model(ids, mask)  # (B, T, V)
    ref = (gather_logprobs(logits[:, :-1], ids[:, 1:]) * response[:, 1:]).sum(-1)
    ref.sum().backward()
    rel_close(fused.detach(), ref.detach())
    rel_close(fused_grad, model.head.lm_head.weight.grad)
    assert calls == [1]
