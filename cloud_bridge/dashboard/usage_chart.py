"""The usage page's chart as plain numbers: one bar per UTC day (delivered below, failures on top), laid
out for an inline SVG the template draws. Pure: the page stays server-rendered, with no script."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass

from cloud_bridge.dashboard.data import UsageView

WIDTH = 720.0  # the SVG's user units
HEIGHT = 160.0


@dataclass(frozen=True, slots=True)
class Bar:
    day: str
    count: int
    failures: int
    x: float
    width: float
    ok_y: float  # the delivered part: from ok_y down to the baseline
    ok_height: float
    fail_y: float  # the failures: stacked on top
    fail_height: float


def days_back(today: str, days: int) -> list[str]:
    """The `days` UTC days ending with `today`, oldest first."""
    last = datetime.date.fromisoformat(today)
    return [(last - datetime.timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]


def bars(rows: Sequence[UsageView], today: str, days: int) -> list[Bar]:
    """One bar per day of the window (empty days too), heights scaled to the busiest day."""
    per_day: dict[str, tuple[int, int]] = {}
    for r in rows:
        count, failures = per_day.get(r.day, (0, 0))
        per_day[r.day] = (count + r.count, failures + r.failures)
    window = days_back(today, days)
    peak = max((per_day.get(d, (0, 0))[0] for d in window), default=0) or 1
    step = WIDTH / len(window)
    out = []
    for index, day in enumerate(window):
        count, failures = per_day.get(day, (0, 0))
        fail_h = HEIGHT * failures / peak
        ok_h = HEIGHT * (count - failures) / peak
        out.append(Bar(day, count, failures, index * step + 1, max(step - 2, 1), HEIGHT - ok_h, ok_h,
                       HEIGHT - ok_h - fail_h, fail_h))  # fmt: skip
    return out
