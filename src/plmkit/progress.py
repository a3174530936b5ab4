"""Progress output that suits where it goes: a live bar on a terminal, plain lines in a log file.

A tqdm bar redraws itself with carriage returns several times a second; written to a file (`... 2> log`,
a CI job, torchrun's per-rank logs) that is megabytes of half-lines. When stderr is not a terminal,
`progress_bar` prints one ordinary line every `every` updates or every `seconds`, whichever comes first,
and one at the end.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["LineProgress", "progress_bar"]


class LineProgress:
    """tqdm's small surface (`update`, `set_postfix`, `write`, `close`) as plain, newline-ended lines."""

    def __init__(
        self,
        total: int | float | None,
        desc: str = "",
        initial: int | float = 0,
        every: int = 0,
        seconds: float = 30.0,
        file: TextIO | None = None,
        disable: bool = False,
        unit: str = "it",
    ) -> None:
        self.total = total
        self.n = initial
        self.desc = desc
        self.unit = unit
        self.every = every if every > 0 else max(1, int(total or 0) // 20) if total else 0
        self.seconds = seconds
        self.file = file if file is not None else sys.stderr
        self.disable = disable
        self.postfix = ""
        self._started = time.monotonic()
        self._last_time = self._started
        self._last_n = initial
        self._closed = False

    def _line(self) -> str:
        elapsed = time.monotonic() - self._started
        where = f"{self.n:g}/{self.total:g}" if self.total else f"{self.n:g}"
        parts = [p for p in (self.desc, f"{where} {self.unit}", f"{elapsed:.0f}s", self.postfix) if p]
        return " | ".join(parts)

    def _emit(self) -> None:
        print(self._line(), file=self.file, flush=True)
        self._last_time = time.monotonic()
        self._last_n = self.n

    def update(self, n: int | float = 1) -> None:
        self.n += n
        if self.disable:
            return
        due_steps = self.every and self.n - self._last_n >= self.every
        if due_steps or time.monotonic() - self._last_time >= self.seconds:
            self._emit()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def write(self, message: str) -> None:
        if not self.disable:
            print(message, file=self.file, flush=True)

    def close(self) -> None:
        if not self.disable and not self._closed and self.n != self._last_n:
            self._emit()
        self._closed = True


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(
    total: int | float | None,
    desc: str = "",
    initial: int | float = 0,
    disable: bool = False,
    every: int = 0,
    seconds: float = 30.0,
    unit: str = "it",
    file: TextIO | None = None,
) -> Any:
    """A tqdm bar when `file` (default stderr) is a terminal, else a `LineProgress` printing a line every
    `every` updates (default: a twentieth of `total`) or `seconds`, whichever comes first."""
    stream = file if file is not None else sys.stderr
    if not disable and _is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(
            total=total, desc=desc or None, initial=initial, unit=unit, dynamic_ncols=True, file=stream
        )
    return LineProgress(total, desc, initial, every, seconds, stream, disable, unit)
