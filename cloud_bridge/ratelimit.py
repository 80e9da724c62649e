"""Token buckets and daily quotas as pure values: callers pass `now`, nothing reads the clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

SECONDS_PER_DAY = 86_400
# How far ahead of this node's clock another's (or this one's before it stepped back) may be and still be
# believed: a limit state written further ahead than this (and than the limit's own period) was not.
CLOCK_SLACK = 60.0


@dataclass(frozen=True, slots=True)
class RateRule:
    """Refill `rate` tokens per second up to `burst` tokens; each admitted intent takes one."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError("rate must be positive")
        if self.burst < 1:
            raise ValueError("burst must be at least 1")


@dataclass(frozen=True, slots=True)
class Bucket:
    """Tokens left at time `updated` (seconds since the epoch)."""

    tokens: float
    updated: float

    @classmethod
    def full(cls, rule: RateRule, now: float) -> Bucket:
        return cls(float(rule.burst), now)

    def refilled(self, rule: RateRule, now: float) -> Bucket:
        """The bucket at `now`. A clock that steps back adds nothing and does not move `updated` back.

        A bucket last changed further ahead of `now` than clocks disagree (CLOCK_SLACK) and than a whole
        refill takes was written by a clock that was wrong (a node an hour ahead): it refills from `now`,
        as if changed now. Waiting for that time refused the device until then, whatever its rate.
        """
        if now <= self.updated:
            if self.updated - now > max(CLOCK_SLACK, rule.burst / rule.rate):
                return Bucket(min(float(rule.burst), self.tokens), now)
            return self
        return Bucket(min(float(rule.burst), self.tokens + (now - self.updated) * rule.rate), now)

    def can_take(self) -> bool:
        return self.tokens >= 1.0

    def take(self) -> Bucket:
        if not self.can_take():
            raise ValueError("bucket is empty")
        return Bucket(self.tokens - 1.0, self.updated)

    def wait_seconds(self, rule: RateRule) -> float:
        """Seconds until one token is available (0 when one is)."""
        return max(0.0, (1.0 - self.tokens) / rule.rate)


def utc_day(now: float) -> int:
    """Days since the epoch for a UTC timestamp: the quota period."""
    return int(now // SECONDS_PER_DAY)


@dataclass(frozen=True, slots=True)
class QuotaCount:
    """Units used on UTC day `day`."""

    day: int
    used: int

    def at(self, day: int) -> QuotaCount:
        """The count on `day`: a new day starts from zero. The day before the count's (a clock behind the one
        that wrote it: another node's across midnight, or this one's stepped back) is the count's day, as a
        bucket adds nothing when the clock steps back: starting the old day from zero again gave a device
        its whole quota once more, and the next day's count was lost. A count further ahead was written by
        a clock that was wrong, not by a midnight: counting on it would refuse the device until that day."""
        if day > self.day or day < self.day - 1:
            return QuotaCount(day, 0)
        return self


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits policy puts on one (device, kind): a token bucket and a daily quota, each optional."""

    rate: RateRule | None = None
    daily_quota: int | None = None

    def __post_init__(self) -> None:
        if self.daily_quota is not None and self.daily_quota < 0:
            raise ValueError("daily quota cannot be negative")

    @property
    def any(self) -> bool:
        return self.rate is not None or self.daily_quota is not None


NO_LIMITS = Limits()


def tenant_subject(tenant: str) -> str:
    """The key a tenant's own limit state is stored under, beside the devices' (a device id has no ':')."""
    return f"tenant:{tenant}"


@dataclass(frozen=True, slots=True)
class LimitState:
    """What the store keeps per (device, kind): the bucket and today's quota count (None: never used)."""

    bucket: Bucket | None = None
    quota: QuotaCount | None = None

    def columns(self) -> tuple[float | None, float | None, int | None, int | None]:
        """(tokens, bucket_at, quota_day, quota_used), as both stores keep it."""
        bucket, quota = self.bucket, self.quota
        return (
            None if bucket is None else bucket.tokens,
            None if bucket is None else bucket.updated,
            None if quota is None else quota.day,
            None if quota is None else quota.used,
        )

    @classmethod
    def from_columns(cls, row: Mapping[str, Any] | None) -> LimitState:
        """The state of a stored `limits` row (None: never used)."""
        if row is None:
            return cls()
        bucket = None if row["tokens"] is None else Bucket(row["tokens"], row["bucket_at"])
        quota = None if row["quota_day"] is None else QuotaCount(row["quota_day"], row["quota_used"])
        return cls(bucket, quota)


def take(limits: Limits, state: LimitState, kind: str, now: float) -> tuple[str, str, LimitState]:
    """Spend one intent of `kind` at `now`: ("", "", new state) when allowed, else (code, detail, state).

    The quota is checked first; a refusal spends neither a token nor a quota unit.
    """
    day = utc_day(now)
    count = (state.quota or QuotaCount(day, 0)).at(day)
    if limits.daily_quota is not None and count.used >= limits.daily_quota:
        return "quota_exceeded", f"daily quota of {limits.daily_quota} {kind} used up (UTC day)", state
    bucket = state.bucket
    if limits.rate is not None:
        bucket = (bucket or Bucket.full(limits.rate, now)).refilled(limits.rate, now)
        if not bucket.can_take():
            wait = bucket.wait_seconds(limits.rate)
            return "rate_limited", f"rate limit for {kind}; next token in {wait:.1f}s", replace(state, bucket=bucket)
        bucket = bucket.take()
    quota = QuotaCount(count.day, count.used + 1) if limits.daily_quota is not None else state.quota
    return "", "", LimitState(bucket, quota)
