"""The LM head's projection and the loss over the vocabulary computed together, a chunk of tokens at a time.

A language model's loss over the vocabulary, written out, first builds the (N, V) logits z = h Wᵀ + b
(N = B·T tokens), then their log-softmax, then in backward the (N, V) gradient. With GPT-2's 50,257-token
vocabulary and 16 × 256 tokens that is three 823 MB fp32 tensors, more than the whole transformer's
activations; Llama 3's 128k and Qwen's 152k vocabularies make it worse. Liger Kernel's fused linear
cross-entropy (Hsu et al. 2024, sec. 3.3) and torchtune's chunked loss never hold them: rows of h are taken
C at a time, the (C, V) logits of the chunk are made, reduced to the loss, turned into their gradient and
dropped before the next chunk.

Cross-entropy with label smoothing ε (the definition `torch.nn.functional.cross_entropy` uses):

    loss_i = (1 - ε) · (lse_i - z_{i,y_i}) + ε · (lse_i - mean_j z_{i,j}),   lse_i = log Σ_j exp z_{i,j}
    ∂loss_i/∂z_i = softmax(z_i) - (1 - ε) · onehot(y_i) - ε / V

and then ∂h_i = (∂loss_i/∂z_i) W, ∂W = Σ_i (∂loss_i/∂z_i)ᵀ h_i, ∂b = Σ_i ∂loss_i/∂z_i. The loss is a scalar,
so `linear_cross_entropy` computes these gradients in the forward pass (the only time the chunk's logits
exist) and backward only scales them by the incoming scalar: the step does the three matrix products of an
unfused head and one softmax instead of a log-softmax forward and backward over the full logits.
`linear_token_logprobs` returns one value per token (log p(y_i) = z_{i,y_i} - lse_i), whose backward
weights differ per token, so it recomputes each chunk's logits in backward instead.

Positions whose label is `ignore_index` are dropped before the projection (they have no loss), so an MLM
batch, where 15% of the tokens are targets, projects only those.

`model_lm_loss` is the training path of the objectives: it runs a `TaskModel`'s backbone, applies what the
head does before its output matrix (BERT's transform; GPT-2, Llama, T5 and BART project the hidden state
directly: T5's d_model^-0.5 rescaling happens inside its backbone, BART's `final_logits_bias` is the
head's bias), and takes the fused loss against the head's weight, tied or not. A head it does not know
(a LoRA-wrapped or quantized projection, another library's model) gets the plain logits and the plain loss.

Shape legend: B batch, T length, N tokens (B·T, or the targets among them), D model width, V vocabulary,
C rows per chunk.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from plmkit.errors import ConfigError

IGNORE = -100

# Elements of one chunk's (C, V) fp32 logits: 2^23 is 32 MB, 166 rows of GPT-2's vocabulary. Fewer rows
# make the ∂W accumulation (a read and write of the whole V × D gradient per chunk) cost more than the
# product that feeds it; more rows only hold more memory.
CHUNK_ELEMENTS = 2**23


def chunk_rows(num_tokens: int, vocab_size: int, chunk_size: int | None = None) -> int:
    """Rows per chunk: `chunk_size` when given, else as many as `CHUNK_ELEMENTS` logits hold (at least 1)."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        return min(chunk_size, max(num_tokens, 1))
    return max(1, min(max(num_tokens, 1), CHUNK_ELEMENTS // vocab_size))


def _check(hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None) -> None:
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ConfigError(
            f"hidden width {hidden.shape[-1]} does not match the head weight {tuple(weight.shape)} (V, D)"
        )
    if hidden.shape[:-1] != labels.shape:
        raise ConfigError(
            f"labels shape {tuple(labels.shape)} does not match hidden {tuple(hidden.shape[:-1])}"
        )
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ConfigError(
            f"head bias shape {tuple(bias.shape)} does not match the vocabulary {weight.shape[0]}"
        )


def _grad_buffers(
    ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, zero_weight: bool = True  # noqa: ANN001
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """fp32 gradient accumulators for the inputs that need one (∂W and ∂b summed over chunks); ∂W is left
    uninitialized with `zero_weight=False` (the caller's first chunk writes it)."""
    needs = ctx.needs_input_grad
    f32 = dict(dtype=torch.float32, device=weight.device)
    grad_hidden = torch.empty(hidden.shape, **f32) if needs[0] else None
    make = torch.zeros if zero_weight else torch.empty
    grad_weight = make(weight.shape, **f32) if needs[1] else None
    grad_bias = torch.zeros(weight.shape[0], **f32) if bias is not None and needs[2] else None
    return grad_hidden, grad_weight, grad_bias


def _logits_buffer(hidden: Tensor, weight: Tensor, rows: int) -> Tensor | None:
    """One (C, V) fp32 buffer that every chunk's logits are written into, when the product is fp32.

    A fresh (C, V) tensor per chunk is a fresh mapping from the OS each time (tens of MB, above malloc's
    reuse threshold): its page faults and zeroing cost a fifth of the chunk's product on the CPU.
    """
    fp32 = hidden.dtype == weight.dtype == torch.float32
    if not fp32 or torch.is_autocast_enabled(hidden.device.type):
        return None
    return torch.empty(min(rows, hidden.shape[0]), weight.shape[0], dtype=torch.float32, device=hidden.device)


def _chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None, buffer: Tensor | None = None) -> Tensor:
    """(C, D) -> (C, V) fp32: the product in the inputs' dtype (bf16 on a GPU), the softmax in fp32;
    written into `buffer` (see `_logits_buffer`) when given."""
    if buffer is not None:
        out = buffer[: h.shape[0]]
        if bias is None:
            return torch.mm(h, weight.t(), out=out)
        return torch.addmm(bias, h, weight.t(), out=out)
    z = F.linear(h, weight, bias)
    return z.float()


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed (label-smoothed) cross-entropy of h Wᵀ + b; gradients made chunk by chunk in forward."""

    @staticmethod
    def forward(  # noqa: ANN205 - autograd.Function signature
        ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, smoothing: float, rows: int,
    ):
        n, vocab = hidden.shape[0], weight.shape[0]
        written = n > 0 and weight.dtype == torch.float32  # the first chunk writes ∂W (see below)
        grad_hidden, grad_weight, grad_bias = _grad_buffers(ctx, hidden, weight, bias, not written)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        w = weight
        buffer = _logits_buffer(hidden, weight, rows)
        for start in range(0, n, rows):
            h = hidden[start : start + rows]  # (C, D)
            y = labels[start : start + rows]  # (C,)
            z = _chunk_logits(h, w, bias, buffer)  # (C, V)
            picked = z.gather(1, y[:, None]).squeeze(1)  # (C,)
            mean = z.mean(dim=-1) if smoothing else None
            # One exp pass serves both the loss and the gradient: z becomes exp(z - max) in place, then
            # softmax in place, then ∂loss/∂z = softmax - (1 - ε) onehot - ε / V.
            top = z.amax(dim=-1, keepdim=True)  # (C, 1)
            total = z.sub_(top).exp_().sum(dim=-1)  # (C,)
            lse = top.squeeze(1) + total.log()
            chunk_loss = lse - picked
            if smoothing:
                chunk_loss = (1 - smoothing) * chunk_loss + smoothing * (lse - mean)
            loss += chunk_loss.sum()
            if grad_hidden is None and grad_weight is None and grad_bias is None:
                continue
            g = z.mul_(total.reciprocal()[:, None])
            if smoothing:
                g.sub_(smoothing / vocab)
            g.scatter_add_(1, y[:, None], torch.full((y.shape[0], 1), smoothing - 1.0, device=g.device))
            g = g.to(w.dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + rows] = g @ w
            if grad_weight is not None and w.dtype == torch.float32:
                # in place: no (V, D) temporary per chunk; under autocast h may be bf16 beside fp32 weights.
                # The first chunk writes ∂W instead of adding to zeros: one pass less over the (V, D) matrix.
                if start == 0:
                    torch.mm(g.t(), h.to(w.dtype), out=grad_weight)
                else:
                    grad_weight.addmm_(g.t(), h.to(w.dtype))
            elif grad_weight is not None:
                grad_weight += (g.t() @ h).float()
            if grad_bias is not None:
                grad_bias += g.sum(0).float()
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.used = False
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor):  # noqa: ANN205 - autograd.Function signature
        if ctx.used:
            raise RuntimeError("linear_cross_entropy: a second backward through the same loss is not "
                               "supported "
                               "(its gradients were made in forward and are scaled in place)")
        ctx.used = True
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        hd, wd, bd = ctx.dtypes
        scale = grad_loss.float()
        # In place: no second (V, D) tensor for ∂W; the stored gradients serve this one backward.
        out_h = None if grad_hidden is None else grad_hidden.mul_(scale).to(hd)
        out_w = None if grad_weight is None else grad_weight.mul_(scale).to(wd)
        out_b = None if grad_bias is None else grad_bias.mul_(scale).to(bd)
        return out_h, out_w, out_b, None, None, None


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    bias: Tensor | None = None,
    *,
    ignore_index: int = IGNORE,
    label_smoothing: float = 0.0,
    reduction: str = "sum",
    chunk_size: int | None = None,
) -> Tensor:
    """cross_entropy(hidden @ weight.T + bias, labels) without the (N, V) logits.

    loss = Σ_{i: y_i != ignore_index} loss_i (see the module docstring for loss_i with smoothing ε);
    reduction "mean" divides by the number of targets (0 targets: NaN, as torch's cross_entropy), "sum" does
    not. hidden (..., D), weight (V, D), labels (...), bias (V,) or None. Returns a scalar fp32 tensor whose
    gradients reach hidden, weight and bias.
    """
    _check(hidden, weight, labels, bias)
    if reduction not in ("sum", "mean"):
        raise ConfigError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if not torch.is_grad_enabled():  # evaluation: no gradient to make in forward
        hidden, weight = hidden.detach(), weight.detach()
        bias = None if bias is None else bias.detach()
    hidden, labels = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    keep = labels != ignore_index
    count = keep.sum()
    if not bool(keep.all()):
        hidden, labels = hidden[keep], labels[keep]  # (N, D), (N,)
    rows = chunk_rows(labels.shape[0], weight.shape[0], chunk_size)
    loss = _LinearCrossEntropy.apply(hidden, weight, bias, labels, float(label_smoothing), rows)
    return loss / count if reduction == "mean" else loss


def fused_lm_loss(
    hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None = None, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """plmkit's loss convention over fused logits: (loss_sum (), num_targets ()), labels -100 for no target.

    The fused form of `causal_lm_loss(hidden @ weight.T + bias, labels)` (and `mlm_loss`, `seq2seq_loss`):
    hidden (B, T, D), labels (B, T) already aligned with the positions that predict them.
    """
    loss_sum = linear_cross_entropy(hidden, weight, labels, bias, chunk_size=chunk_size)
    return loss_sum, (labels != IGNORE).sum()


class _LinearTokenLogprobs(torch.autograd.Function):
    """log softmax(h Wᵀ + b)[y] per row; backward recomputes each chunk's logits."""

    @staticmethod
    def forward(  # noqa: ANN205 - autograd.Function signature
        ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, rows: int
    ):
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        buffer = _logits_buffer(hidden, weight, rows)
        for start in range(0, hidden.shape[0], rows):
            z = _chunk_logits(hidden[start : start + rows], weight, bias, buffer)  # (C, V)
            out[start : start + rows] = z.gather(1, labels[start : start + rows, None]).squeeze(1) - \
                torch.logsumexp(z, dim=-1)
        ctx.save_for_backward(hidden, weight, bias, labels, out)
        ctx.rows = rows
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # noqa: ANN205 - autograd.Function signature
        hidden, weight, bias, labels, logps = ctx.saved_tensors
        grad_hidden, grad_weight, grad_bias = _grad_buffers(ctx, hidden, weight, bias)
        rows = ctx.rows
        buffer = _logits_buffer(hidden, weight, rows)
        for start in range(0, hidden.shape[0], rows):
            h, y = hidden[start : start + rows], labels[start : start + rows]
            go = grad_out[start : start + rows].float()
            z = _chunk_logits(h, weight, bias, buffer)
            # ∂ log p_y / ∂z = onehot(y) - softmax(z); lse = z_y - log p_y, known from forward.
            lse = z.gather(1, y[:, None]).squeeze(1) - logps[start : start + rows]
            g = z.sub_(lse[:, None]).exp_().neg_()
            g.scatter_add_(1, y[:, None], torch.ones(y.shape[0], 1, device=g.device))
            g.mul_(go[:, None])
            g = g.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + rows] = g @ weight
            if grad_weight is not None:
                grad_weight += (g.t() @ h).float()
            if grad_bias is not None:
                grad_bias += g.sum(0).float()
        return (
            None if grad_hidden is None else grad_hidden.to(hidden.dtype),
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            None,
            None,
        )


def linear_token_logprobs(
    hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None = None, chunk_size: int | None = None
) -> Tensor:
    """log softmax(hidden @ weight.T + bias)[labels] without the (N, V) logits: the per-token log-probs
    that SFT, DPO, PPO and GRPO score sequences with.

    hidden (..., D), weight (V, D), labels (...) of valid ids (select the scored rows first) -> (...) fp32.
    """
    _check(hidden, weight, labels, bias)
    shape = labels.shape
    flat_h, flat_y = hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1)
    if flat_y.numel() and (int(flat_y.min()) < 0 or int(flat_y.max()) >= weight.shape[0]):
        raise ConfigError(f"labels must be token ids in [0, {weight.shape[0]}) for linear_token_logprobs")
    rows = chunk_rows(flat_y.shape[0], weight.shape[0], chunk_size)
    return _LinearTokenLogprobs.apply(flat_h, weight, bias, flat_y, rows).reshape(shape)


# ---- the training path of a TaskModel ---------------------------------------------------------------


def lm_projection(model: nn.Module) -> tuple[Callable[[Tensor], Tensor], Tensor, Tensor | None] | None:
    """How a `TaskModel`'s LM head turns hidden states into logits, split at the output matrix:
    (features: hidden -> the head's input to its output matrix, weight (V, D), bias (V,) or None).

    None when the model is not a TaskModel with a plain LM head (a wrapped or quantized projection, a
    sentence-pair head, another library's model): callers then use the logits.
    """
    from plmkit.models.bert import MaskedLMHead
    from plmkit.models.heads import TaskModel

    if not isinstance(model, TaskModel):
        return None
    if any(type(m).__name__.startswith("FSDP") for m in (model, model.head)):
        # FSDP2 gathers the root's sharded weights in the root module's forward hook, which calling
        # `model.backbone` directly would skip: the caller uses the logits of `model(...)` instead.
        return None
    head = model.head
    projection = getattr(head, "lm_head", None)
    weight = getattr(projection, "weight", None)
    # A plain projection is a Linear or a tied matrix with no sub-modules (a LoRA wrapper has some).
    if not isinstance(weight, Tensor) or weight.dim() != 2 or any(True for _ in projection.children()):
        return None
    if type(projection) is not nn.Linear and type(projection).__name__ != "TiedProjection":
        return None
    bias = getattr(projection, "bias", None)
    if isinstance(head, MaskedLMHead):
        return (lambda h: head.norm(head.activation(head.dense(h)))), weight, bias
    # A soft-capped head (Gemma 2) is not a plain projection: the fused loss would skip the cap
    if type(head).__name__ in ("LMHead", "Seq2SeqLMHead") and getattr(head, "softcap", None) is None:
        return (lambda h: h), weight, bias
    return None


def model_lm_loss(
    model: nn.Module,
    labels: Tensor,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    **backbone_inputs: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """(loss_sum, num_targets) of `model(input_ids, attention_mask, **backbone_inputs)`'s logits against
    labels (B, T),
    -100 for no target, through the fused loss when the model's head allows it.

    The same value as `causal_lm_loss(model(...), labels)` (or `mlm_loss` / `seq2seq_loss`, which are the
    same sum) to fp32 rounding, without the (B, T, V) logits.
    """
    parts = lm_projection(model)
    if parts is None:
        out = model(input_ids, attention_mask, **backbone_inputs)
        logits = out.logits if hasattr(out, "logits") else out  # (B, T, V)
        loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                   ignore_index=IGNORE, reduction="sum")
        return loss_sum, (labels != IGNORE).sum()
    features, weight, bias = parts
    hidden = model.backbone(input_ids=input_ids, attention_mask=attention_mask, **backbone_inputs)  # (B,T,D)
    keep = labels != IGNORE
    if not bool(keep.all()):
        # Only target rows go through the head's transform and the projection (MLM: 15% of them).
        return fused_lm_loss(features(hidden[keep]), weight, labels[keep], bias)
    return fused_lm_loss(features(hidden), weight, labels, bias)
