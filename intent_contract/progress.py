"""Progress of long commands (export, import, flush) on stderr: one line rewritten on a terminal,
a line every tenth of the way otherwise (logs and tests read those)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO


def progress_line(label: str, stream: TextIO | None = None) -> Callable[[int, int], None]:
    """A callback `(done, total)` that shows `label: done/total`."""
    out = stream or sys.stderr
    tty = out.isatty()
    shown = [-1]

    def show(done: int, total: int) -> None:
        step = 10 * done // total if total else 10
        if tty:
            out.write(f"\r{label}: {done:,}/{total:,}" + ("\n" if done >= total else ""))
        elif step != shown[0]:
            shown[0] = step
            out.write(f"{label}: {done:,}/{total:,}\n")
        out.flush()

    return show
