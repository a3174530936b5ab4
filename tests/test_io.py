"""Atomic writes (plmkit.io): the previous version survives an error or a kill at any point of a save."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import plmkit
from plmkit import io
from plmkit.errors import CheckpointError
from plmkit.models.gpt import GPT2Config, gpt2_lm

torch.set_num_threads(1)


def _tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return gpt2_lm(GPT2Config(vocab_size=32, max_positions=16, d_model=16, num_layers=1, num_heads=2))


def test_atomic_file_keeps_old_content_on_error(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    io.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), io.atomic_file(target) as handle:
        handle.write('{"a": 2, "half')
        raise RuntimeError("killed")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_atomic_dir_replaces_whole_directory_and_keeps_old_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with io.atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("1")
        (tmp / "stale.txt").write_text("old only")
    with pytest.raises(ValueError), io.atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("2")
        raise ValueError("midway")
    assert (target / "config.json").read_text() == "1"
    with io.atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]  # no file of the old version left
    assert (target / "config.json").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporaries


def test_atomic_dir_refuses_a_folder_that_is_not_an_output(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="no config.json; refusing to replace"):
        with io.atomic_dir(tmp_path, replaces="config.json"):
            pass
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_atomic_dir_recovers_a_replacement_cut_between_renames(tmp_path: Path) -> None:
    # where renameat2 is missing the old directory is renamed aside first; a kill right then leaves it there
    aside = tmp_path / ".out.old-abc"
    aside.mkdir()
    (aside / "config.json").write_text("old")
    with io.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "config.json").write_text("new")
    assert (tmp_path / "out" / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_save_hf_error_midway_keeps_previous_export(tmp_path: Path, monkeypatch) -> None:
    old = _tiny(0)
    plmkit.save_hf(old, tmp_path / "m")

    class Broken:
        def save(self, directory: Path) -> None:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        plmkit.save_hf(_tiny(1), tmp_path / "m", tokenizer=Broken())
    loaded = plmkit.load(tmp_path / "m").model
    for (name, a), b in zip(old.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


KILLED_SAVE = textwrap.dedent(
    """
    import sys, time
    import torch
    torch.set_num_threads(1)
    import plmkit
    from plmkit.interop import hf
    from plmkit.models.gpt import GPT2Config, gpt2_lm

    real_save_file = hf.save_file

    def slow_save_file(state, path, metadata=None):
        real_save_file(state, path, metadata=metadata)
        print("weights written", flush=True)  # the new weights are on disk, config.json is not
        time.sleep(60)

    hf.save_file = slow_save_file
    torch.manual_seed(1)
    model = gpt2_lm(GPT2Config(vocab_size=32, max_positions=16, d_model=16, num_layers=1, num_heads=2))
    plmkit.save_hf(model, sys.argv[1])
    """
)


def test_save_hf_killed_midway_leaves_old_directory_loadable(tmp_path: Path) -> None:
    old = _tiny(0)
    target = tmp_path / "m"
    plmkit.save_hf(old, target)
    script = tmp_path / "killed_save.py"
    script.write_text(KILLED_SAVE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(script), str(target)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "weights written", line
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    loaded = plmkit.load(target).model
    for (name, a), b in zip(old.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(p.name.startswith(".m.tmp-") for p in tmp_path.iterdir())  # the killed save's leftovers
    new = _tiny(2)
    plmkit.save_hf(new, target)  # the next save clears them
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed_save.py", "m"]
    again = plmkit.load(target).model
    assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), again.state_dict().values()))


def test_save_hf_killed_at_random_points_always_leaves_a_whole_export(tmp_path: Path) -> None:
    target = tmp_path / "m"
    plmkit.save_hf(_tiny(0), target)
    loop = tmp_path / "loop.py"
    loop.write_text(
        "import sys, torch\ntorch.set_num_threads(1)\nimport plmkit\n"
        "from plmkit.models.gpt import GPT2Config, gpt2_lm\n"
        "m = gpt2_lm(GPT2Config(vocab_size=32, max_positions=16, d_model=16, num_layers=1, num_heads=2))\n"
        "print('ready', flush=True)\n"
        "while True:\n    plmkit.save_hf(m, sys.argv[1])\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for delay in (0.05, 0.13, 0.21):
        command = [sys.executable, str(loop), str(target)]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.kill()
        proc.wait(timeout=60)
        plmkit.load(target)  # whichever version is there, it is whole
