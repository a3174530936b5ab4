"""Pretrain a language model from scratch on text files.

Tokenizes the files once into a token store (memory-mapped shards), packs them into windows of
`data.seq_len` tokens, and trains with the objective named by `--objective` through the one training
loop; every `train.eval_every` steps (and at the end) it reports the validation loss and perplexity.
With `train.out_dir` set, checkpoints land there and the final model is also exported in Hugging Face
format to `<out_dir>/hf`.

The stores live in `data.store_dir` (default `<out_dir>/store`) as `train/` and `val/`. A store is reused
only for the same inputs (paths, sizes, sha256, tokenizer, split); other inputs are refused in one line
(`--data.rebuild_store` rebuilds it). Stores made by `plmkit data prepare --out_dir=DIR/train` (and
`DIR/val`) train with `--data.store_dir=DIR` and no text files; the tokenizer then comes from the store.

    plmkit pretrain --config configs/gpt-shakespeare-char.yaml
    plmkit pretrain --objective=clm --model.family=gpt2 --data.train_files=a.txt,b.txt \\
        --data.tokenizer=char --train.max_steps=200 --train.out_dir=runs/gpt
    plmkit pretrain --data.store_dir=data/shakespeare --train.out_dir=runs/gpt
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.errors import ConfigError, DataError
from plmkit.models.gpt import GPT2Config, gpt2_lm
from plmkit.models.llama import LlamaConfig, llama_lm
from plmkit.recipes import text2text as t2t
from plmkit.training import StepOutput, TrainConfig, train
from plmkit.training.distributed import all_reduce_sum, full_model, init_distributed, main_first, on_main
from plmkit.training.runtime import DEVICE_HELP
from plmkit.training.steps import clm_step, make_mlm


@dataclass
class ModelConfig:
    family: str = field(default="gpt2", metadata={"help": "model family", "choices": lambda: MODELS})
    vocab_size: int = field(default=0, metadata={"help": "vocabulary rows (0: the tokenizer's size)"})
    d_model: int = field(default=384, metadata={"help": "model width"})
    num_layers: int = field(default=6, metadata={"help": "transformer blocks"})
    num_heads: int = field(default=6, metadata={"help": "attention heads"})
    num_kv_heads: int = field(default=0, metadata={"help": "key/value heads for GQA (0: num_heads)"})
    d_ff: int = field(default=0, metadata={"help": "feed-forward width (0: the family's default)"})
    max_positions: int = field(default=1024, metadata={"help": "context window"})
    dropout: float = field(default=0.0, metadata={"help": "dropout probability"})
    init_from: str = field(default="", metadata={"help": "start from this checkpoint directory instead"})


@dataclass
class DataConfig:
    train_files: list[str] = field(
        default_factory=list, metadata={"help": "text or JSONL training files ('': the store in store_dir)"}
    )
    val_files: list[str] = field(default_factory=list, metadata={"help": "validation files (optional)"})
    tokenizer: str = field(
        default="", metadata={"help": "tokenizer directory/file, or 'char' for characters of the train files"}
    )
    split: str = field(default="blank_line", metadata={"help": "documents are: blank_line, line or file"})
    seq_len: int = field(default=256, metadata={"help": "tokens per training window"})
    batch_size: int = field(default=16, metadata={"help": "windows per micro-batch"})
    store_dir: str = field(
        default="", metadata={"help": "token stores' directory: train/ and val/ ('': <out_dir>/store)"}
    )
    rebuild_store: bool = field(
        default=False, metadata={"help": "rebuild a store built from other inputs (default: refuse)"}
    )
    eval_batches: int = field(default=20, metadata={"help": "validation batches per evaluation"})
    sampling: str = field(
        default="packed",
        metadata={"help": "training windows: packed (fixed, shuffled each epoch) or random_windows "
                          "(fresh random offsets every step, as nanoGPT)"},
    )


@dataclass
class Config:
    objective: str = field(
        default="clm", metadata={"help": "training objective", "choices": lambda: OBJECTIVES}
    )
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the network"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "text and tokenization"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "the training loop"})
    seed: int = field(default=0, metadata={"help": "seed for initialization, batching and masking"})
    device: str = field(default="auto", metadata={"help": "where to train: " + DEVICE_HELP})
    nsp: bool = field(default=False, metadata={"help": "with --objective=mlm: add next-sentence prediction"})
    sop: bool = field(default=False, metadata={"help": "with --objective=mlm: add sentence-order prediction"})


def build_gpt2(m: ModelConfig, vocab_size: int) -> nn.Module:
    return gpt2_lm(GPT2Config(vocab_size=vocab_size, max_positions=m.max_positions, d_model=m.d_model,
                              num_layers=m.num_layers, num_heads=m.num_heads, d_ff=m.d_ff or None,
                              dropout=m.dropout))


def build_llama(m: ModelConfig, vocab_size: int) -> nn.Module:
    # SwiGLU has three matrices: 8/3 * d keeps the parameter count of a 4 * d GELU MLP (Shazeer 2020).
    d_ff = m.d_ff or 8 * m.d_model // 3
    return llama_lm(LlamaConfig(vocab_size=vocab_size, max_positions=m.max_positions, d_model=m.d_model,
                                num_layers=m.num_layers, num_heads=m.num_heads,
                                num_kv_heads=m.num_kv_heads or None, d_ff=d_ff, dropout=m.dropout))


def build_encoder(family: str) -> Callable[[ModelConfig, int], nn.Module]:
    """A BERT-family masked LM of the given family (bert, roberta, albert, distilbert)."""

    def build(m: ModelConfig, vocab_size: int) -> nn.Module:
        from plmkit.models.albert import AlbertConfig, albert_mlm
        from plmkit.models.bert import BertConfig, bert_mlm
        from plmkit.models.distilbert import DistilBertConfig, distilbert_mlm

        shape = dict(vocab_size=vocab_size, d_model=m.d_model, num_layers=m.num_layers, num_heads=m.num_heads,
                     d_ff=m.d_ff or None, max_positions=m.max_positions, dropout=m.dropout,
                     attention_dropout=m.dropout)
        if family == "albert":
            return albert_mlm(AlbertConfig(**shape, embedding_size=min(128, m.d_model)))
        if family == "distilbert":
            return distilbert_mlm(DistilBertConfig(**shape))
        # RoBERTa's pad id is 1 and its positions start after it (two extra rows).
        if family == "roberta":
            shape["max_positions"] += 2
            return bert_mlm(BertConfig(**shape, type_vocab_size=1, pad_token_id=1, model_type="roberta"))
        return bert_mlm(BertConfig(**shape))

    return build


# Model family -> builder(model config, vocabulary size) -> nn.Module.
MODELS: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "gpt2": build_gpt2,
    "llama": build_llama,
    "bert": build_encoder("bert"),
    "roberta": build_encoder("roberta"),
    "albert": build_encoder("albert"),
    "distilbert": build_encoder("distilbert"),
    "t5": t2t.build_t5,
    "bart": t2t.build_bart,
}


def make_clm(tokenizer: Any, seed: int) -> Callable[[nn.Module, dict[str, torch.Tensor]], StepOutput]:
    return clm_step


# Objective -> factory(tokenizer, seed) -> step_fn(model, batch) -> StepOutput. A factory gets the
# tokenizer (mask/sentinel ids) and the run's seed; per-batch randomness comes from `step_generator()`.
OBJECTIVES: dict[str, Callable[[Any, int], Callable[[nn.Module, dict[str, torch.Tensor]], StepOutput]]] = {
    "clm": make_clm,
    "mlm": make_mlm,
    "span_corruption": t2t.make_span_corruption,
    "denoising": t2t.make_denoising,
}


# Training window samplers (data.sampling); validation always reads the packed windows in order.
SAMPLINGS = ("packed", "random_windows")


def _with_pair_head(cfg: Config, model: nn.Module) -> nn.Module:
    from plmkit.models.bert import with_pair_head

    if cfg.nsp and cfg.sop:
        raise ConfigError("--nsp and --sop are exclusive: choose one sentence-pair task")
    if cfg.objective != "mlm" or cfg.model.family not in ("bert", "albert"):
        raise ConfigError(f"--nsp/--sop need --objective=mlm and model.family bert or albert "
                          f"(got {cfg.objective}, {cfg.model.family})")
    return with_pair_head(model, "sop" if cfg.sop else "nsp")


def _choice(name: str, value: str, table: dict) -> Any:
    if value not in table:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(sorted(table))}")
    return table[value]


def _tokenizer(cfg: DataConfig) -> Any:
    from plmkit.data.tokenizer import CharTokenizer, load_tokenizer

    if not cfg.tokenizer:
        raise ConfigError("data.tokenizer is required: a tokenizer directory/file or 'char'")
    if cfg.tokenizer == "char":
        # Characters of the raw files, separators included, so any span of them encodes.
        chars: set[str] = set()
        for file in cfg.train_files + cfg.val_files:
            try:
                chars.update(Path(file).read_text(encoding="utf-8"))
            except OSError as e:
                raise DataError(f"data file {file}: {e.strerror}") from None
        return CharTokenizer(sorted(chars))
    return load_tokenizer(cfg.tokenizer)


def _store(*args: Any) -> Any:
    """`_open_store` on rank 0 first (it may build the store), then on the other ranks (they open it)."""
    return main_first(lambda: _open_store(*args))


def _open_store(files: list[str], tokenizer: Any, where: Path, split: str, rebuild: bool) -> Any:
    """The token store of `files` at `where`: reused when it holds exactly them, built when absent; a
    store of other inputs is rebuilt with `rebuild`, refused otherwise. No files: the store as it is."""
    from plmkit.data.store import TokenStore, build_store

    if where.exists():
        store = TokenStore(where)
        if not files:
            if tokenizer is not None:
                store.check_tokenizer(tokenizer)
            return store
        reason = store.stale_reason(files, tokenizer, split=split)
        if reason is None:
            return store
        if not rebuild:
            raise DataError(f"token store {where} holds other data: {reason}; "
                            "--data.rebuild_store rebuilds it (or choose another --data.store_dir)")
    elif not files:
        raise DataError(f"{where} holds no token store and no data files were given (prepare one with "
                        f"`plmkit data prepare --out_dir={where}` or set --data.train_files)")
    build_store(files, tokenizer, where, split=split, progress=False, overwrite=True)
    return TokenStore(where)


# What each objective trains, so a mismatched pair fails before any work (lm_kind of the built model).
OBJECTIVE_KINDS = {"clm": "causal", "mlm": "encoder", "span_corruption": "seq2seq", "denoising": "seq2seq"}
KIND_NAMES = {
    "causal": "a causal LM (gpt2, llama)",
    "encoder": "an encoder (bert, roberta, albert, distilbert)",
    "seq2seq": "an encoder-decoder (t5, bart)",
}


def _check_objective(objective: str, model: nn.Module, what: str) -> None:
    from plmkit.models.generation import lm_kind

    kind, needed = lm_kind(model), OBJECTIVE_KINDS.get(objective)
    if needed is not None and kind != needed:
        fits = ", ".join(o for o, k in OBJECTIVE_KINDS.items() if k == kind)
        raise ConfigError(f"--objective={objective} trains {KIND_NAMES[needed]}, but {what} is "
                          f"{KIND_NAMES[kind]}: use --objective={fits}")


def _train_store_path(root: Path) -> Path:
    # `data prepare --out_dir=DIR` may have made DIR itself the training store.
    from plmkit.data.store import MANIFEST

    return root if (root / MANIFEST).is_file() else root / "train"


def evaluate_clm(model: nn.Module, batches: Any, num_batches: int) -> dict[str, float]:
    """Mean next-token loss and perplexity over `num_batches` batches."""
    total, count = 0.0, 0
    with torch.no_grad():
        for _ in range(num_batches):
            batch = batches.next_batch()
            device = next(model.parameters()).device
            out = clm_step(model, {k: v.to(device) for k, v in batch.items()})
            total += float(out.loss_sum)
            count += int(out.num_targets)
    totals = all_reduce_sum(torch.tensor([total, count], dtype=torch.float64))  # each rank read its share
    total, count = totals.tolist()
    loss = total / max(count, 1)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}


def run(cfg: Config) -> dict:
    from plmkit.data.batches import RandomWindows
    from plmkit.data.store import PackedBatches
    from plmkit.interop.hf import FAMILIES, load, save_hf

    if cfg.data.sampling not in SAMPLINGS:
        raise ConfigError(f"data.sampling={cfg.data.sampling!r} is not one of {', '.join(SAMPLINGS)}")
    make_step = _choice("objective", cfg.objective, OBJECTIVES)
    build = _choice("model.family", cfg.model.family, MODELS)
    out_dir = Path(cfg.train.out_dir) if cfg.train.out_dir else None
    if cfg.data.store_dir:
        store_root = Path(cfg.data.store_dir)
    elif out_dir is not None:
        store_root = out_dir / "store"
    else:
        raise ConfigError("set train.out_dir or data.store_dir: the token store needs a directory")
    if not cfg.data.train_files and not cfg.data.store_dir:
        raise ConfigError("data.train_files is empty: give text or JSONL files, or a prepared data.store_dir")
    train_path = _train_store_path(store_root)
    if not cfg.data.train_files and not train_path.exists():
        _store([], None, train_path, cfg.data.split, False)  # says what is missing
    info = init_distributed(cfg.device)  # joins torchrun's process group; a no-op for one process
    torch.manual_seed(cfg.seed)
    if cfg.model.init_from:
        loaded = load(cfg.model.init_from)
        model, tokenizer = loaded.model, loaded.require_tokenizer()
        _check_objective(cfg.objective, model, cfg.model.init_from)
    else:
        if not cfg.data.train_files and not cfg.data.tokenizer:
            from plmkit.data.store import TokenStore

            tokenizer = TokenStore(train_path).tokenizer()  # the one the prepared ids came from
        else:
            tokenizer = _tokenizer(cfg.data)
        model = build(cfg.model, cfg.model.vocab_size or tokenizer.vocab_size)
        _check_objective(cfg.objective, model, f"model.family={cfg.model.family}")
    if cfg.nsp or cfg.sop:  # MLM plus a sentence-pair task: the MLM model gets a pre-training head
        model = _with_pair_head(cfg, model)
    rebuild = cfg.data.rebuild_store
    train_store = _store(cfg.data.train_files, tokenizer, train_path, cfg.data.split, rebuild)
    if cfg.data.sampling == "random_windows":
        batches: Any = RandomWindows(train_store, cfg.data.seq_len, cfg.data.batch_size, seed=cfg.seed,
                                     rank=info.rank, world_size=info.world_size)
    else:
        batches = PackedBatches(train_store, cfg.data.seq_len, cfg.data.batch_size, seed=cfg.seed,
                                rank=info.rank, world_size=info.world_size)
    eval_fn = None
    val_path = store_root / "val"
    if cfg.data.val_files or (not cfg.data.train_files and val_path.exists()):
        val_store = _store(cfg.data.val_files, tokenizer, val_path, cfg.data.split, rebuild)

        def eval_fn(m: nn.Module) -> dict[str, float]:
            if cfg.objective in t2t.CORRUPTIONS:  # the seq2seq loss on corruptions fixed by the run's seed
                # every rank scores the whole set (the same corruptions), so no reduction is needed
                val = PackedBatches(val_store, cfg.data.seq_len, cfg.data.batch_size, seed=0, shuffle=False)
                n = min(cfg.data.eval_batches, val.batches_per_epoch)
                return t2t.evaluate_seq2seq(m, val, n, t2t.CORRUPTIONS[cfg.objective](tokenizer), cfg.seed)
            # each rank reads its share of every global batch; evaluate_clm sums over ranks
            val = PackedBatches(val_store, cfg.data.seq_len, cfg.data.batch_size, seed=0, shuffle=False,
                                rank=info.rank, world_size=info.world_size)
            return evaluate_clm(m, val, min(cfg.data.eval_batches, val.batches_per_epoch))

    model.to(info.device)
    result = train(model, make_step(tokenizer, cfg.seed), batches, cfg.train, eval_fn=eval_fn,
                   tokenizer=tokenizer)
    summary: dict[str, Any] = {"steps": result.step, "final_loss": result.history[-1]["loss"]}
    summary.update(result.final_eval)
    exported = full_model(model)  # under FSDP2 the full weights, on rank 0; every rank takes part
    if out_dir is not None and getattr(model.config, "model_type", None) in FAMILIES:
        summary["hf_export"] = on_main(lambda: str(save_hf(exported, out_dir / "hf", tokenizer=tokenizer)))
    return summary
