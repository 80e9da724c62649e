"""The usage rollup's pure parts: what each audit event adds, merging, percentiles from buckets, days."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_bridge.audit import AuditEvent
from cloud_bridge.refusals import RefusalThrottle
from cloud_bridge.usage import (
    BUCKETS,
    LATENCY_BOUNDS_MS,
    Dimension,
    Tally,
    UsageQuery,
    bucket_of,
    day_of,
    merged,
    parse_day,
    percentile,
    tally,
)

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC


def test_only_final_events_count() -> None:
    assert tally("t", "d", "k", AuditEvent.ACCEPT, NOW) is None
    assert tally("t", "d", "k", AuditEvent.RETRY, NOW, 0.1) is None
    assert tally("t", "d", "k", AuditEvent.REFUSE, NOW) is None
    rejected = tally("t", "d", "k", AuditEvent.REJECT, NOW)
    assert rejected is not None and (rejected.rejected, rejected.timed, rejected.day) == (1, 0, "2027-01-15")


def test_merging_adds_counts_and_keeps_the_maximum() -> None:
    rows = merged(
        [
            tally("t", "d", "k", AuditEvent.DELIVER, NOW, 0.2),
            None,
            tally("t", "d", "k", AuditEvent.FAIL, NOW, 1.5),
            tally("a", "d", "k", AuditEvent.DELIVER, NOW),
        ]
    )
    assert [r.tenant for r in rows] == ["a", "t"]
    both = rows[1]
    assert (both.delivered, both.failed, both.timed, both.time_max_ms) == (1, 1, 2, pytest.approx(1500))
    assert sum(both.histogram) == 2


def added_one_by_one(tallies: list[Tally | None]) -> list[Tally]:
    """What `merged` must equal: each key's tallies added a pair at a time, in order."""
    rows: dict[tuple[str, str, str, str], Tally] = {}
    for t in tallies:
        if t is None:
            continue
        if t.key not in rows:
            rows[t.key] = t
            continue
        old = rows[t.key]
        rows[t.key] = Tally(
            *t.key,
            delivered=old.delivered + t.delivered,
            failed=old.failed + t.failed,
            expired=old.expired + t.expired,
            rejected=old.rejected + t.rejected,
            timed=old.timed + t.timed,
            time_sum_ms=old.time_sum_ms + t.time_sum_ms,
            time_max_ms=max(old.time_max_ms, t.time_max_ms),
            histogram=tuple(a + b for a, b in zip(old.histogram, t.histogram, strict=True)),
        )
    return [rows[k] for k in sorted(rows)]


RESULTS = st.tuples(
    st.sampled_from(["t", "u"]),
    st.sampled_from(["d1", "d2"]),
    st.sampled_from(list(AuditEvent)),
    st.floats(min_value=NOW, max_value=NOW + 3 * 86_400),
    st.none() | st.floats(min_value=0, max_value=100),
)


@given(st.lists(RESULTS, max_size=40))
def test_merged_adds_each_rows_tallies_as_adding_them_one_by_one_would(results: list[tuple]) -> None:
    tallies = [tally(tenant, device, "k", event, at, seconds) for tenant, device, event, at, seconds in results]
    assert merged(tallies) == added_one_by_one(tallies)


@given(st.floats(min_value=0, max_value=100_000))
def test_a_time_lands_in_the_first_bucket_whose_bound_holds_it(ms: float) -> None:
    index = bucket_of(ms / 1000)
    assert 0 <= index < BUCKETS
    if index < len(LATENCY_BOUNDS_MS):
        assert ms <= LATENCY_BOUNDS_MS[index] * (1 + 1e-9)
    if index > 0:
        assert ms > LATENCY_BOUNDS_MS[index - 1] * (1 - 1e-9)


def test_percentiles_are_bucket_bounds_capped_by_the_maximum() -> None:
    histogram = [0] * BUCKETS
    histogram[bucket_of(0.008)] = 90  # 90 calls <= 10 ms
    histogram[bucket_of(0.4)] = 10  # 10 calls in (250, 500] ms
    assert percentile(histogram, 0.5, 400.0) == 10
    assert percentile(histogram, 0.95, 400.0) == 400.0
    assert percentile([0] * BUCKETS, 0.5, 0.0) is None


def test_days_from_dates_and_durations() -> None:
    assert parse_day("2026-11-30", NOW) == "2026-11-30"
    assert parse_day("7d", NOW) == "2027-01-08"
    assert parse_day("today", NOW) == "2027-01-15"
    with pytest.raises(ValueError, match="neither a day"):
        parse_day("last week", NOW)
    with pytest.raises(ValueError, match="before"):
        UsageQuery("2027-01-02", "2027-01-01")
    assert UsageQuery("2027-01-01", "2027-01-01", group=(Dimension.DEVICE,)).columns == ("tenant", "device_id")


def test_refused_connects_are_audited_once_per_device_code_and_window() -> None:
    throttle = RefusalThrottle(window=60)
    assert throttle.take("d", "token_invalid", NOW) == 0
    assert throttle.take("d", "token_invalid", NOW + 1) is None
    assert throttle.take("d", "token_invalid", NOW + 2) is None
    assert throttle.take("d", "device_revoked", NOW + 2) == 0  # another reason is its own line
    assert throttle.take("e", "token_invalid", NOW + 2) == 0
    assert throttle.take("d", "token_invalid", NOW + 61) == 2  # the next line counts those left out
    assert throttle.take("d", "token_invalid", NOW + 62) is None


@given(st.integers(min_value=0, max_value=4_000_000_000_000).map(lambda ms: ms / 1000))  # times as the ledger has them
def test_day_of_is_the_utc_date(seconds: float) -> None:
    expected = datetime.datetime.fromtimestamp(seconds, datetime.UTC).date().isoformat()
    assert day_of(seconds) == expected
