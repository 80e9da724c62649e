"""The usage chart's layout: one bar per day of the window, empty days included, scaled to the busiest."""

from __future__ import annotations

import pytest

from cloud_bridge.dashboard.data import UsageView
from cloud_bridge.dashboard.usage_chart import HEIGHT, bars, days_back


def test_bars_cover_every_day_and_stack_failures_on_top() -> None:
    rows = [
        UsageView("2026-12-01", "acme", "email.send", 8, 2),
        UsageView("2026-12-01", "acme", "sms.send", 2, 0),
        UsageView("2026-11-30", "acme", "email.send", 5, 5),
    ]
    chart = bars(rows, "2026-12-02", 3)
    assert [(b.day, b.count, b.failures) for b in chart] == [
        ("2026-11-30", 5, 5),
        ("2026-12-01", 10, 2),
        ("2026-12-02", 0, 0),
    ]
    busiest = chart[1]
    assert busiest.ok_height + busiest.fail_height == pytest.approx(HEIGHT)
    assert busiest.fail_y + busiest.fail_height == pytest.approx(busiest.ok_y)
    assert chart[0].ok_height == 0 and chart[0].fail_height == pytest.approx(HEIGHT / 2)
    assert chart[2].ok_height == chart[2].fail_height == 0
    assert chart[0].x < chart[1].x < chart[2].x


def test_days_back_crosses_months() -> None:
    assert days_back("2027-03-01", 2) == ["2027-02-28", "2027-03-01"]
