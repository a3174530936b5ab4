"""Two CPU processes under torchrun (gloo; DDP, and FSDP2 fully_shard), each with half of every global batch
and two accumulated micro-batches, log the same losses as one process with the whole batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import tiny_run  # noqa: E402

SCRIPT = Path(__file__).parent / "tiny_run.py"


def _losses(out_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_two_processes_match_one_process(tmp_path, mode):
    single = tiny_run.run(str(tmp_path / "single"), steps=4, batch_size=8, dropout=0.0, checkpoint_every=0)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(SCRIPT), str(tmp_path / "ddp"), "--steps", "4", "--batch-size", "2", "--grad-accum", "2",
        "--dropout", "0", "--checkpoint-every", "2", *(["--fsdp"] if mode == "fsdp" else []),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    ddp = _losses(tmp_path / "ddp")
    assert ddp == pytest.approx([r["loss"] for r in single.history], rel=1e-6)
    assert single.history[-1]["loss"] < single.history[0]["loss"]
    # only rank 0 wrote: one metrics row per step, one set of checkpoints
    assert len(ddp) == 4
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["metrics.jsonl", "step-2", "step-4"]
    config = json.loads((tmp_path / "ddp" / "step-4" / "config.json").read_text())
    assert config["architecture"] == "TinyLM" and config["train"]["fsdp"] == (mode == "fsdp")


def test_an_error_on_one_rank_ends_every_rank_with_that_error(tmp_path):
    """Rank 1 fails mid-run while rank 0 waits in the gradient all-reduce: the run ends at once (no hang
    until the collective's timeout), non-zero, with rank 1's message."""
    import time

    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(SCRIPT), str(tmp_path / "run"), "--steps", "6", "--batch-size", "2", "--dropout", "0",
        "--checkpoint-every", "0", "--fail-rank", "1", "--fail-step", "3",
    ]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode != 0
    assert time.monotonic() - started < 120
    assert "DataError: bad batch on rank 1 at step 3" in done.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # rank 0 logged the steps both ranks finished, no more
