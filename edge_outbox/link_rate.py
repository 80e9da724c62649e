"""The link's recent acknowledgement rate and the drain estimate made from it: pure, clock injected."""

from __future__ import annotations

from collections import deque

WINDOW_S = 60.0


class AckRate:
    """Intents the bridge acknowledged per second over the last minute; 0.0 when it acknowledged none."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self._window = window_s
        self._marks: deque[tuple[float, int]] = deque()  # (monotonic seconds, acknowledged so far)

    def record(self, now: float, acked_total: int) -> None:
        marks = self._marks
        marks.append((now, acked_total))
        while len(marks) > 2 and marks[1][0] <= now - self._window:
            marks.popleft()

    def rate(self, now: float) -> float:
        """Acknowledged per second from the oldest mark in the window to `now`."""
        marks = self._marks
        if len(marks) < 2:
            return 0.0
        (then, first), (_last_at, last) = marks[0], marks[-1]
        elapsed = now - then
        return (last - first) / elapsed if elapsed > 0 and last > first else 0.0


def drain_seconds(pending: int, rate: float) -> float | None:
    """How long the backlog takes at `rate`: 0.0 with nothing pending, None (unknown) with no recent rate."""
    if pending <= 0:
        return 0.0
    if rate <= 0:
        return None
    return pending / rate
