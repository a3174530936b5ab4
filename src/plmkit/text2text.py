"""Encoder-decoder glue for the recipes: T5/BART builders, span-corruption and denoising steps for
`plmkit pretrain`, and the text-to-text task for `plmkit finetune --task=text2text`.

    plmkit pretrain --objective=span_corruption --model.family=t5 --data.train_files=a.txt ...
    plmkit pretrain --objective=denoising --model.family=bart --data.train_files=a.txt ...
    plmkit finetune --task=text2text --pretrained=runs/t5/hf --data.train_file=train.jsonl \\
        --data.eval_file=dev.jsonl --data.text_column=source --data.label_column=target

The text-to-text task reads JSONL/TSV with a source field (`--data.text_column`, default "source") and
a target field (`--data.label_column`; its default "label" reads the field "target"). Sources carry
their task prefix ("summarize: ..."). Evaluation generates greedily and reports exact match, BLEU and
ROUGE-L.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.data.text2text import TaskSpec, Text2TextExample, encode_examples, read_examples
from plmkit.errors import ConfigError
from plmkit.metrics_text import bleu, exact_match, rouge_l
from plmkit.models.bart import BartConfig, bart_lm
from plmkit.models.seq2seq_generation import generate_texts
from plmkit.models.t5 import T5Config, shift_right, t5_lm
from plmkit.objectives.denoising import DenoisingConfig, denoising_batch
from plmkit.objectives.seq2seq import seq2seq_loss
from plmkit.objectives.span_corruption import span_corruption_batch
from plmkit.training import StepOutput, step_generator

NUM_SENTINELS = 100  # T5's extra_ids: the top rows of the vocabulary


# ---- pretraining ------------------------------------------------------------------------------------


def build_t5(m: Any, vocab_size: int) -> nn.Module:
    """T5 v1.1-style (gated-GELU) from the pretrain recipe's model shape; 100 sentinel rows are added
    above the tokenizer's vocabulary, as T5 adds its extra_ids."""
    return t5_lm(
        T5Config(
            vocab_size=vocab_size + NUM_SENTINELS,
            d_model=m.d_model,
            d_kv=m.d_model // m.num_heads,
            d_ff=m.d_ff or 4 * m.d_model,
            num_layers=m.num_layers,
            num_heads=m.num_heads,
            dropout=m.dropout,
            feed_forward="gated-gelu",
            tie_embeddings=True,
            scale_decoder_outputs=True,
        )
    )


def build_bart(m: Any, vocab_size: int) -> nn.Module:
    """BART from the pretrain recipe's model shape; an extra top row is <mask> if the tokenizer has none."""
    return bart_lm(
        BartConfig(
            vocab_size=vocab_size + 1,
            max_positions=m.max_positions,
            d_model=m.d_model,
            num_layers=m.num_layers,
            num_heads=m.num_heads,
            d_ff=m.d_ff or 4 * m.d_model,
            dropout=m.dropout,
            pad_token_id=0,
            bos_token_id=0,
            eos_token_id=0,
            decoder_start_token_id=0,
        )
    )


def _seq2seq_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
    cfg = model.config
    dec = shift_right(batch["labels"], cfg.decoder_start_token_id, cfg.pad_token_id)
    logits = model(batch["input_ids"], batch.get("attention_mask"), decoder_input_ids=dec)  # (B, T, V)
    loss_sum, n = seq2seq_loss(logits, batch["labels"])
    return StepOutput(loss_sum=loss_sum, num_targets=n)


def make_span_corruption(
    tokenizer: Any, seed: int
) -> Callable[[nn.Module, dict[str, torch.Tensor]], StepOutput]:
    """Span corruption on packed windows: a window of `span_corruption_lengths(S)[0]` tokens gives
    encoder inputs of exactly S tokens. Sentinels are the model's top vocabulary rows."""
    eos = getattr(tokenizer, "eos_id", None)

    def step(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
        g = step_generator()
        corrupted = span_corruption_batch(batch["input_ids"], g, model.config.vocab_size - 1, eos)
        return _seq2seq_step(model, corrupted)

    return step


def make_denoising(tokenizer: Any, seed: int) -> Callable[[nn.Module, dict[str, torch.Tensor]], StepOutput]:
    """BART text infilling (30%, Poisson(3) spans) plus sentence permutation at '.' tokens."""
    dots = tuple(i for t in (".", "Ġ.", "▁.") if (i := _token_id(tokenizer, t)) is not None)

    def step(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
        g = step_generator()
        mask_id = getattr(tokenizer, "mask_id", None)
        cfg = DenoisingConfig(
            mask_id=model.config.vocab_size - 1 if mask_id is None else mask_id, sentence_end_ids=dots
        )
        return _seq2seq_step(model, denoising_batch(batch["input_ids"], cfg, g, model.config.pad_token_id))

    return step


def _token_id(tokenizer: Any, token: str) -> int | None:
    try:
        return tokenizer.token_to_id(token)
    except Exception:  # noqa: BLE001 - a tokenizer without the token
        return None


# ---- fine-tuning: the finetune recipe's Task row --------------------------------------------------


class TiedProjection(nn.Module):
    """hidden @ embeddingᵀ (+ bias): the LM output tied to the shared embedding.

    Not an `nn.Linear`, so the fine-tuning recipe's re-initialization of fresh heads leaves the
    pretrained embedding it shares alone.
    """

    def __init__(self, embedding: nn.Embedding, bias: bool):
        super().__init__()
        self.weight = embedding.weight
        self.bias = nn.Parameter(torch.zeros(embedding.num_embeddings)) if bias else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.weight, self.bias)


class Seq2SeqLMHead(nn.Module):
    """`LMHead`'s layout (`lm_head`) over a `TiedProjection`, so export and generation treat it alike."""

    def __init__(self, embedding: nn.Embedding, bias: bool):
        super().__init__()
        self.lm_head = TiedProjection(embedding, bias)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.lm_head(hidden)  # (B, T, V)


def text2text_head(backbone: nn.Module, num_labels: int, cfg: Any) -> nn.Module:
    if not hasattr(backbone, "decode"):
        raise ConfigError(
            f"--task=text2text needs an encoder-decoder (t5, bart), got {type(backbone).__name__}"
        )
    if getattr(backbone.config, "tie_embeddings", True) is False:
        raise ConfigError("--task=text2text needs a checkpoint whose LM head is tied to the embedding")
    return Seq2SeqLMHead(backbone.embed_tokens, bias=backbone.config.model_type == "bart")


def _spec(d: Any, path: str) -> TaskSpec:
    target = "target" if d.label_column == "label" else d.label_column
    return TaskSpec(name="", path=path, source_field=d.text_column or "source", target_field=target)


def read_text2text(d: Any, path: str, labels: Sequence[str] | None) -> list[Text2TextExample]:
    return read_examples(_spec(d, path))


def no_label_set(records: Sequence[Any]) -> list[str]:
    return []


def encode_text2text(
    tokenizer: Any, records: Sequence[Text2TextExample], labels: Sequence[str], d: Any
) -> list[dict]:
    """Source and target packed in one row so the recipe's shared collate pads them together:
    input_ids = source + target, labels = -100 over the source, start_positions = source length.
    `unpack` splits them again."""
    out = []
    for f in encode_examples(
        tokenizer, records, d.max_length, d.max_length, where=d.train_file or "examples"
    ):
        n = len(f["input_ids"])
        out.append(
            {
                "input_ids": f["input_ids"] + f["labels"],
                "labels": [-100] * n + f["labels"],
                "start_positions": n,
            }
        )
    return out


def unpack(batch: dict[str, torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """Packed rows (see `encode_text2text`) -> right-padded sources with mask (B, S) and labels (B, T)."""
    lengths = batch["start_positions"].tolist()
    totals = batch["attention_mask"].sum(-1).tolist()
    s, t = max(lengths), max(total - n for n, total in zip(lengths, totals))
    b = len(lengths)
    ids = torch.full((b, s), pad_id, dtype=torch.long)
    mask = torch.zeros(b, s, dtype=torch.long)
    labels = torch.full((b, t), -100, dtype=torch.long)
    for i, (n, total) in enumerate(zip(lengths, totals)):
        ids[i, :n], mask[i, :n] = batch["input_ids"][i, :n], 1
        labels[i, : total - n] = batch["labels"][i, n:total]
    device = batch["input_ids"].device
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def text2text_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
    return _seq2seq_step(model, unpack(batch, model.config.pad_token_id))


def evaluate_text2text(
    model: nn.Module, tokenizer: Any, records: Sequence[Text2TextExample], labels: Sequence[str], d: Any
) -> dict[str, float]:
    """Greedy generation on the evaluation records: exact match (0-1), BLEU and ROUGE-L (0-100)."""
    hyps = generate_texts(
        model,
        tokenizer,
        [r.source for r in records],
        max_source_length=d.max_length,
        batch_size=d.eval_batch_size,
        max_new_tokens=d.max_length,
        eos_token_id=getattr(tokenizer, "eos_id", None),
    )
    refs = [r.target for r in records]
    return {"exact_match": exact_match(hyps, refs), "bleu": bleu(hyps, refs), "rougeL": rouge_l(hyps, refs)}
