"""Progress output: plain lines (no carriage returns, no bar frames) when stderr is not a terminal."""

from __future__ import annotations

import io

from plmkit.progress import LineProgress, progress_bar


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_file_gets_a_line_every_twentieth_and_at_the_end() -> None:
    out = io.StringIO()
    bar = progress_bar(100, "train", unit="step", file=out)
    assert isinstance(bar, LineProgress)
    for _ in range(100):
        bar.update(1)
        bar.set_postfix(loss="1.0")
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 20 and "\r" not in out.getvalue()
    assert lines[0].startswith("train | 5/100 step") and lines[-1].startswith("train | 100/100 step")
    assert lines[-1].endswith("loss=1.0")


def test_time_limit_prints_between_step_marks(monkeypatch) -> None:
    clock = iter(float(t) for t in range(0, 1000, 31))
    monkeypatch.setattr("plmkit.progress.time.monotonic", lambda: next(clock))
    out = io.StringIO()
    bar = LineProgress(10_000, "x", every=10_000, seconds=30.0, file=out)
    bar.update(1)  # 31 s after the start: due by time, long before 10 000 steps
    assert out.getvalue().startswith("x | 1/10000 it")


def test_terminal_gets_tqdm_and_disabled_prints_nothing() -> None:
    bar = progress_bar(3, file=_Tty())
    assert not isinstance(bar, LineProgress) and hasattr(bar, "refresh")  # a live tqdm bar
    bar.close()
    out = io.StringIO()
    quiet = progress_bar(3, file=out, disable=True)
    quiet.update(3)
    quiet.close()
    assert out.getvalue() == ""


def test_a_redirected_training_log_holds_plain_lines_and_no_bar_frames(tmp_path) -> None:
    """What the tour's `... 2> log` sees: the training loop and the token store write whole lines only."""
    import os
    import subprocess
    import sys

    text = "\n\n".join(f"the cat sat on the mat number {i}. the dog ran far." for i in range(40))
    (tmp_path / "train.txt").write_text(text)
    command = [
        sys.executable, "-m", "plmkit", "pretrain", f"--data.train_files={tmp_path / 'train.txt'}",
        "--data.tokenizer=char", "--data.seq_len=16", "--data.batch_size=4", "--model.d_model=16",
        "--model.num_layers=1", "--model.num_heads=2", "--model.max_positions=32", "--train.max_steps=40",
        f"--train.out_dir={tmp_path / 'run'}", "--device=cpu",
    ]  # fmt: skip
    with open(tmp_path / "log", "wb") as log:
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=log, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    raw = (tmp_path / "log").read_bytes()
    assert done.returncode == 0, raw.decode()[-2000:]
    assert b"\r" not in raw and b"\x1b[" not in raw  # no carriage returns, no cursor movement
    lines = raw.decode().splitlines()
    steps = [line for line in lines if line.startswith("train | ")]
    assert [s.split(" | ")[1] for s in steps] == [f"{2 * k}/40 step" for k in range(1, 21)]
    assert "loss=" in steps[-1]
    assert lines[0] == ("global batch = micro-batch 4 x accumulation 1 x ranks 1 = 4; "
                        "one process on cpu, precision fp32")
