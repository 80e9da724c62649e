"""Rate limits (token bucket) and daily quotas, driven with an injected clock: the policy says which
limits apply, `ratelimit.take` spends them on the state the store keeps per (device, kind)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_bridge.policy import Decision, DeviceRef, PolicyEngine
from cloud_bridge.ratelimit import CLOCK_SLACK, SECONDS_PER_DAY, Bucket, LimitState, QuotaCount, RateRule, take, utc_day

DAY0 = 19_700 * SECONDS_PER_DAY  # midnight UTC
DEV = DeviceRef("d-1", "t", "n")
NOTE = {"target": "oncall", "body": "b"}


@dataclass
class Limited:
    """What admission does: the policy's decision, then its limits spent on the stored state."""

    engine: PolicyEngine
    states: dict[tuple[str, str], LimitState] = field(default_factory=dict)

    def check(self, device: DeviceRef, kind: str, payload: dict[str, Any], now: float) -> Decision:
        decision = self.engine.check(device, kind, payload)
        if not decision.allowed or not decision.limits.any:
            return decision
        key = (device.device_id, kind)
        code, detail, self.states[key] = take(decision.limits, self.states.get(key, LimitState()), kind, now)
        return Decision(False, code, detail) if code else decision

    def load_usage(self, counts: dict[tuple[str, str], int], day: int) -> None:
        for key, used in counts.items():
            self.states[key] = LimitState(self.states.get(key, LimitState()).bucket, QuotaCount(day, used))

    def usage(self, now: float) -> dict[tuple[str, str], int]:
        day = utc_day(now)
        return {k: s.quota.used for k, s in self.states.items() if s.quota is not None and s.quota.day == day}


def engine(rate: dict[str, Any] | None = None, quota: int | None = None) -> Limited:
    policy: dict[str, Any] = {"kinds": ["notify", "sms.send"], "notify_targets": ["oncall"]}
    if rate is not None:
        policy["rate"] = {"notify": rate}
    if quota is not None:
        policy["daily_quota"] = {"notify": quota}
    return Limited(PolicyEngine.from_config({"t": {"policy": policy}}))


def test_burst_then_refill() -> None:
    e = engine({"per_minute": 60, "burst": 3})
    assert [e.check(DEV, "notify", NOTE, DAY0).allowed for _ in range(4)] == [True, True, True, False]
    assert e.check(DEV, "notify", NOTE, DAY0).code == "rate_limited"
    assert e.check(DEV, "notify", NOTE, DAY0 + 1.0).allowed
    assert not e.check(DEV, "notify", NOTE, DAY0 + 1.0).allowed


def test_buckets_are_per_device_and_kind() -> None:
    e = engine({"per_hour": 1, "burst": 1})
    assert e.check(DEV, "notify", NOTE, DAY0).allowed
    assert not e.check(DEV, "notify", NOTE, DAY0).allowed
    assert e.check(DeviceRef("d-2", "t", "n"), "notify", NOTE, DAY0).allowed
    assert e.check(DEV, "sms.send", {"to": "+4915112345678", "text": "x"}, DAY0).allowed


def test_refused_intents_take_no_token() -> None:
    e = engine({"per_hour": 1, "burst": 1})
    assert e.check(DEV, "notify", {"target": "nope", "body": "b"}, DAY0).code == "policy_target"
    assert e.check(DEV, "notify", NOTE, DAY0).allowed


def test_daily_quota_resets_at_utc_midnight() -> None:
    e = engine(quota=2)
    assert e.check(DEV, "notify", NOTE, DAY0 + 10).allowed
    assert e.check(DEV, "notify", NOTE, DAY0 + 20).allowed
    assert e.check(DEV, "notify", NOTE, DAY0 + SECONDS_PER_DAY - 1).code == "quota_exceeded"
    assert e.check(DEV, "notify", NOTE, DAY0 + SECONDS_PER_DAY).allowed
    assert e.usage(DAY0 + SECONDS_PER_DAY) == {("d-1", "notify"): 1}


def test_a_clock_behind_the_count_spends_on_the_counts_day() -> None:
    """A count written on day D+1 (another node's clock, or this one's before it stepped back) is not a
    fresh day D: the device's quota is not given again, and the new day's count is kept."""
    e = engine(quota=2)
    assert e.check(DEV, "notify", NOTE, DAY0 + SECONDS_PER_DAY + 1).allowed
    assert e.check(DEV, "notify", NOTE, DAY0 + SECONDS_PER_DAY - 1).allowed  # a second behind midnight
    assert e.check(DEV, "notify", NOTE, DAY0 + SECONDS_PER_DAY - 1).code == "quota_exceeded"
    assert e.check(DEV, "notify", NOTE, DAY0 + SECONDS_PER_DAY + 2).code == "quota_exceeded"
    assert e.usage(DAY0 + SECONDS_PER_DAY) == {("d-1", "notify"): 2}


def test_a_bucket_written_far_ahead_by_a_wrong_clock_refills_from_now() -> None:
    rule = RateRule(rate=1.0, burst=2)
    ahead = Bucket(0.0, DAY0 + 3600)  # emptied by a node whose clock ran an hour ahead
    assert ahead.refilled(rule, DAY0) == Bucket(0.0, DAY0)
    assert ahead.refilled(rule, DAY0).refilled(rule, DAY0 + 10) == Bucket(2.0, DAY0 + 10)
    near = Bucket(0.0, DAY0 + CLOCK_SLACK)  # within what clocks disagree by: believed, adds nothing
    assert near.refilled(rule, DAY0) is near
    slow = RateRule(rate=1 / 3600, burst=2)  # a refill takes two hours: an hour ahead is within it
    assert ahead.refilled(slow, DAY0) is ahead


def test_a_count_written_days_ahead_by_a_wrong_clock_does_not_lock_the_device_out() -> None:
    e = engine(quota=1)
    assert e.check(DEV, "notify", NOTE, DAY0 + 30 * SECONDS_PER_DAY).allowed  # a clock a month ahead
    assert e.check(DEV, "notify", NOTE, DAY0 + 10).allowed  # back on time: today's count starts from zero
    assert e.check(DEV, "notify", NOTE, DAY0 + 20).code == "quota_exceeded"


def test_quota_refusal_takes_no_token_and_rate_refusal_takes_no_quota() -> None:
    e = engine({"per_hour": 1, "burst": 1}, quota=5)
    assert e.check(DEV, "notify", NOTE, DAY0).allowed
    assert e.check(DEV, "notify", NOTE, DAY0).code == "rate_limited"
    assert e.usage(DAY0) == {("d-1", "notify"): 1}
    e2 = engine({"per_hour": 1, "burst": 1}, quota=0)
    assert e2.check(DEV, "notify", NOTE, DAY0).code == "quota_exceeded"


def test_load_usage_restores_today_only() -> None:
    e = engine(quota=3)
    e.load_usage({("d-1", "notify"): 3}, utc_day(DAY0))
    assert e.check(DEV, "notify", NOTE, DAY0 + 5).code == "quota_exceeded"
    e.load_usage({("d-1", "notify"): 3}, utc_day(DAY0) - 1)
    assert e.check(DEV, "notify", NOTE, DAY0 + 5).allowed


def test_default_burst_is_the_period_count() -> None:
    e = engine({"per_minute": 2})
    assert [e.check(DEV, "notify", NOTE, DAY0).allowed for _ in range(3)] == [True, True, False]


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0.01, max_value=50),
    burst=st.integers(min_value=1, max_value=20),
    steps=st.lists(st.floats(min_value=-5, max_value=30, allow_nan=False), min_size=1, max_size=80),
)
def test_bucket_never_admits_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, steps: list[float]
) -> None:
    rule = RateRule(rate, burst)
    # Times mostly advance but may step back (a clock adjustment, within CLOCK_SLACK of the latest) or repeat.
    times, t, latest = [], 1000.0, 1000.0
    for step in steps:
        t = max(t + step, latest - CLOCK_SLACK)
        latest = max(latest, t)
        times.append(t)
    bucket = Bucket.full(rule, times[0])
    admitted: list[float] = []
    for now in times:
        bucket = bucket.refilled(rule, now)
        if bucket.can_take():
            bucket = bucket.take()
            admitted.append(now)
        assert 0.0 <= bucket.tokens <= burst
    # Over any window of the effective (monotone) clock, admissions are bounded.
    effective, high = [], float("-inf")
    for now in admitted:
        high = max(high, now)
        effective.append(high)
    for i in range(len(effective)):
        for j in range(i, len(effective)):
            window = effective[j] - effective[i]
            assert j - i + 1 <= burst + rate * window + 1e-6


@settings(max_examples=100, deadline=None)
@given(calls=st.lists(st.floats(min_value=0, max_value=5), min_size=1, max_size=60))
def test_engine_respects_bucket_bound(calls: list[float]) -> None:
    e = engine({"per_second": 1, "burst": 2})
    t = DAY0
    admitted = 0
    for gap in calls:
        t += gap
        admitted += e.check(DEV, "notify", NOTE, t).allowed
    assert admitted <= 2 + (t - DAY0) * 1 + 1e-6
