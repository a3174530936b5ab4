"""A run SIGKILLed mid-checkpoint-write and mid-training, then resumed, logs bitwise the same per-step losses
as an uninterrupted run (fp32, CPU, one thread)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import tiny_run  # noqa: E402

from plmkit.training import find_latest  # noqa: E402

SCRIPT = Path(__file__).parent / "tiny_run.py"
STEPS = 8


def _losses(out_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["split"] == "train"]


def _start(out_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(SCRIPT), str(out_dir), "--steps", str(STEPS), *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _kill_when(process: subprocess.Popen, ready, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.stdout.read().decode()
        assert time.monotonic() < deadline, "the run never reached the kill point"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _has_row(out_dir: Path, step: int) -> bool:
    try:
        return any(s >= step for s, _ in _losses(out_dir))
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return False


def test_killed_and_resumed_run_matches_uninterrupted_bitwise(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tiny_run.run(str(tmp_path / "reference"), steps=STEPS)
    finally:
        torch.set_num_threads(threads)
    reference = _losses(tmp_path / "reference")
    assert [s for s, _ in reference] == list(range(1, STEPS + 1))

    out = tmp_path / "run"
    # 1. killed while checkpoint step-3 is being written: it must not look complete
    tmp3 = out / ".tmp-step-3"
    first = _start(out, "--slow-write-step", "3")
    _kill_when(first, lambda: (tmp3 / "model.safetensors").exists())
    assert (out / "step-2").is_dir() and not (out / "step-3").exists() and tmp3.is_dir()
    assert find_latest(out) == out / "step-2"

    # 2. resumed, then killed again somewhere in the middle of training
    second = _start(out, "--resume", "--step-delay", "0.1")
    _kill_when(second, lambda: _has_row(out, 5))

    # 3. resumed to the end
    third = _start(out, "--resume")
    output, _ = third.communicate(timeout=600)
    assert third.returncode == 0, output.decode()
    assert _losses(out) == reference  # bitwise: floats survive JSON exactly
    assert not list(out.glob(".tmp-*"))
