"""The drain estimate: measured over the last minute, unknown when nothing was acknowledged lately."""

from __future__ import annotations

import pytest

from edge_outbox.link_rate import AckRate, drain_seconds


def test_idle_with_nothing_pending_drains_in_no_time() -> None:
    rate = AckRate()
    rate.record(0.0, 0)
    rate.record(30.0, 0)
    assert drain_seconds(0, rate.rate(30.0)) == 0.0


def test_offline_with_a_backlog_is_unknown_not_a_huge_number() -> None:
    rate = AckRate()
    for t in range(0, 200, 1):  # acknowledged 1,000 long ago, then nothing for two minutes
        rate.record(float(t), 1000 if t else 0)
    assert rate.rate(199.0) == 0.0
    assert drain_seconds(5, rate.rate(199.0)) is None


def test_draining_estimate_is_the_backlog_over_the_recent_rate() -> None:
    rate = AckRate()
    for t in range(121):
        rate.record(float(t), t * 50)  # 50 acknowledged per second
    assert rate.rate(120.0) == pytest.approx(50.0)
    assert drain_seconds(1000, rate.rate(120.0)) == pytest.approx(20.0)
