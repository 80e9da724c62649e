"""A clock a test sets by hand: what the executor and its jobs read as now (seconds since the epoch)."""

from __future__ import annotations

import time


class Clock:
    """Now is `t` (from the real time at first, or `start`): a test moves it by assigning to it."""

    def __init__(self, start: float | None = None) -> None:
        self.t = time.time() if start is None else start

    def __call__(self) -> float:
        return self.t
