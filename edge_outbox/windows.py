"""Forwarding windows (`run --forward-window 02:00-04:00`): when the outbox may reach the bridge. Pure.

A window is a span of local wall-clock time, every day; one whose end is not after its start runs
past midnight (22:00-02:00). No windows means always. Times are seconds after local midnight, as the
caller reads them (from the bridge-corrected clock: a site's firewall opens by real time, not by a
dead RTC's).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from edge_outbox.errors import ConfigError

DAY = 86_400
_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True, slots=True)
class Window:
    start: int  # seconds after local midnight
    end: int  # exclusive; end <= start: the window runs past midnight

    def __post_init__(self) -> None:
        if not (0 <= self.start < DAY and 0 <= self.end < DAY) or self.start == self.end:
            raise ConfigError("a forwarding window needs two different times of day")

    @classmethod
    def parse(cls, text: str) -> Window:
        match = _WINDOW.match(text)
        if match is None:
            raise ConfigError(f"--forward-window {text!r}: expected HH:MM-HH:MM, e.g. 02:00-04:00")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
            raise ConfigError(f"--forward-window {text!r}: not a time of day")
        return cls(h1 * 3600 + m1 * 60, h2 * 3600 + m2 * 60)

    def contains(self, t: float) -> bool:
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def __str__(self) -> str:
        return (
            f"{self.start // 3600:02d}:{self.start % 3600 // 60:02d}-{self.end // 3600:02d}:{self.end % 3600 // 60:02d}"
        )


def _hhmm(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}"


def parse_windows(texts: Iterable[str]) -> tuple[Window, ...]:
    return tuple(Window.parse(t) for t in texts)


def is_open(windows: tuple[Window, ...], t: float) -> bool:
    """Whether the outbox may connect at `t` seconds after local midnight."""
    return not windows or any(w.contains(t % DAY) for w in windows)


def seconds_until_open(windows: tuple[Window, ...], t: float) -> float:
    """0 when open now, else the seconds until the next window starts."""
    if is_open(windows, t):
        return 0.0
    return min((w.start - t % DAY) % DAY for w in windows)


def seconds_until_closed(windows: tuple[Window, ...], t: float) -> float | None:
    """Seconds until no window is open any more (overlapping windows count as one); None: never closes."""
    if not windows:
        return None
    waited = 0.0
    now = t % DAY
    for _ in range(len(windows) + 1):
        ends = [(w.end - now) % DAY or DAY for w in windows if w.contains(now)]
        if not ends:
            return waited
        step = max(ends)
        waited += step
        now = (now + step) % DAY
    return None  # windows chained around the whole day: always open
