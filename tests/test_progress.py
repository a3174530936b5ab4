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
