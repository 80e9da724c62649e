"""The bridge clock a device learns, and forwarding windows: pure functions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_outbox.bridge_clock import MAX_OFFSET_MS, BridgeClock, TimeSample
from edge_outbox.db import IntentRow
from edge_outbox.errors import ConfigError
from edge_outbox.forward_wire import envelope_of
from edge_outbox.states import State
from edge_outbox.windows import Window, is_open, parse_windows, seconds_until_closed, seconds_until_open
from intent_contract.codec import Envelope

HOUR = 3_600_000


def test_an_online_answer_sets_the_offset_within_its_round_trip() -> None:
    # The device's clock is 2 h behind: the bridge read 12:00 while the device went 10:00:00.0 -> 10:00:00.2.
    sample = TimeSample.between(12 * HOUR, 10 * HOUR, 10 * HOUR + 200, "online")
    clock = BridgeClock().learn(sample, 10 * HOUR + 200)
    assert 2 * HOUR - 200 <= clock.offset_ms <= 2 * HOUR
    assert clock.source == "online"


def test_a_receipt_moves_the_offset_only_into_what_it_proves() -> None:
    # Bundle made at 10:00 by the device, imported at 11:00 bridge time, receipt read back at 10:30 device time:
    # the bridge clock is at least 30 min and at most 1 h ahead.
    sample = TimeSample.receipt(11 * HOUR, 10 * HOUR + HOUR // 2, 10 * HOUR, 11 * HOUR, "receipt")
    assert BridgeClock().learn(sample, 0).offset_ms == HOUR // 2
    assert BridgeClock(offset_ms=-5 * HOUR).learn(sample, 0).offset_ms == HOUR // 2
    assert BridgeClock(offset_ms=5 * HOUR).learn(sample, 0).offset_ms == HOUR
    inside = BridgeClock(offset_ms=HOUR * 3 // 4, source="before")
    assert inside.learn(sample, 0) is inside


def test_a_receipt_without_a_bundle_bounds_only_from_below() -> None:
    clock = BridgeClock().learn(TimeSample.receipt(100 * HOUR, 4 * HOUR, None, None, "receipt"), 4 * HOUR)
    assert clock.offset_ms == 96 * HOUR  # a clock reset long ago is caught up to at least the receipt's time
    ahead = BridgeClock(offset_ms=97 * HOUR)
    assert ahead.learn(TimeSample.receipt(100 * HOUR, 4 * HOUR, None, None, "r"), 0) is ahead


def test_an_answer_centuries_off_teaches_nothing() -> None:
    # A bridge writing its time in microseconds (or nanoseconds): no device clock is that far off.
    now = 1_700_000_000_000
    for bridge in (now * 1000, now * 1_000_000, now + MAX_OFFSET_MS + 1000, now - MAX_OFFSET_MS - 1000):
        clock = BridgeClock(offset_ms=7)
        assert clock.learn(TimeSample.between(bridge, now, now + 10, "online"), now) is clock
        assert clock.learn(TimeSample.receipt(bridge, now, None, None, "receipt"), now) is clock
    assert BridgeClock().learn(TimeSample.between(now + MAX_OFFSET_MS, now, now, "x"), now).offset_ms == MAX_OFFSET_MS
    # one stored by a version that believed such an answer is forgotten
    assert BridgeClock.from_json(BridgeClock(now * 999).to_json()) == BridgeClock()


def test_crossed_bounds_teach_nothing() -> None:
    clock = BridgeClock(offset_ms=7)
    assert clock.learn(TimeSample(10, 5, "stepped"), 0) is clock


@given(st.integers(-(10**12), 10**12), st.integers(0, 10**6), st.integers(-(10**12), 10**12))
def test_the_learned_offset_always_lies_within_the_bounds(bridge: int, trip: int, start: int) -> None:
    sample = TimeSample.between(bridge, start, start + trip, "x")
    clock = BridgeClock(offset_ms=start).learn(sample, 0)
    assert sample.low is not None
    assert sample.high is not None
    assert sample.low <= clock.offset_ms <= sample.high


def test_envelope_times_go_to_the_bridge_clock() -> None:
    row = IntentRow(7, "a", "app", "notify", State.ACCEPTED, "", "", 0, 1000, 5000, 1000, 1, 0, 0, 0, b'{"x": 1}', 8)
    moved = envelope_of(row, BridgeClock(offset_ms=2 * HOUR))
    assert moved == Envelope("a", "app", "notify", 1000 + 2 * HOUR, 5000 + 2 * HOUR, 1, {"x": 1})
    assert envelope_of(row._replace(expires=None), BridgeClock()).expires is None
    assert envelope_of(row, BridgeClock()) == Envelope("a", "app", "notify", 1000, 5000, 1, {"x": 1})


def test_windows() -> None:
    night = parse_windows(["02:00-04:00", "22:30-23:00"])
    assert is_open(night, 3 * 3600)
    assert not is_open(night, 4 * 3600)
    assert seconds_until_open(night, 4 * 3600) == 18 * 3600 + 1800
    assert seconds_until_open(night, 23 * 3600) == 3 * 3600
    assert seconds_until_closed(night, 3 * 3600) == 3600
    assert seconds_until_closed(night, 5 * 3600) == 0
    assert is_open((), 12345) and seconds_until_closed((), 0) is None


def test_windows_across_midnight_and_overlapping() -> None:
    wrap = parse_windows(["22:00-02:00"])
    assert is_open(wrap, 23 * 3600) and is_open(wrap, 3600) and not is_open(wrap, 3 * 3600)
    assert seconds_until_closed(wrap, 23 * 3600) == 3 * 3600
    chained = parse_windows(["01:00-03:00", "02:00-05:00"])
    assert seconds_until_closed(chained, 3600) == 4 * 3600
    assert seconds_until_closed(parse_windows(["00:00-12:00", "12:00-00:00"]), 0) is None


@pytest.mark.parametrize("text", ["2-4", "02:00", "25:00-01:00", "02:60-03:00", "03:00-03:00"])
def test_bad_windows_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        Window.parse(text)
