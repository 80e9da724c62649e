"""Progress of long commands (export, import, flush) on stderr: one line rewritten on a terminal,
a line every tenth of the way otherwise (logs and tests read those).

A command may stop short of its total (an export whose bundle is full, an import's `--wait` that runs
out): `end()` (or leaving the `with` block) shows the last figures on a line of their own, so the line
never stops at an earlier tenth, and on a terminal the next message starts a line of its own instead of
landing after `results: 1,150/1,200`.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import TextIO


class ProgressLine:
    """A callback `(done, total)` that shows `label: done/total`; a context manager that ends the line."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self._label = label
        self._out = stream or sys.stderr
        self._tty = self._out.isatty()
        self._step = -1
        self._last: tuple[int, int] | None = None  # the latest figures reported
        self._shown: tuple[int, int] | None = None  # the figures on the screen or in the log
        self._open = False  # a terminal line written without its newline

    def __call__(self, done: int, total: int) -> None:
        self._last = (done, total)
        if self._tty:
            self._write(done, total, end=done >= total)
            return
        step = 10 * done // total if total else 10
        if step != self._step:
            self._step = step
            self._write(done, total, end=True)

    def end(self) -> None:
        """The last figures reported, on a line that is ended; nothing when nothing was reported."""
        if self._last is not None and self._last != self._shown:
            self._write(*self._last, end=True)
        elif self._open:
            self._out.write("\n")
            self._out.flush()
            self._open = False

    def _write(self, done: int, total: int, *, end: bool) -> None:
        self._out.write(("\r" if self._tty else "") + f"{self._label}: {done:,}/{total:,}" + ("\n" if end else ""))
        self._out.flush()
        self._shown = (done, total)
        self._open = self._tty and not end

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.end()


def progress_line(label: str, stream: TextIO | None = None) -> ProgressLine:
    """A `ProgressLine` for `label` on `stream` (stderr by default); use it in a `with` block."""
    return ProgressLine(label, stream)
