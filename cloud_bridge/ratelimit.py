"""Token buckets and daily quotas as pure values: callers pass `now`, nothing reads the clock."""

from __future__ import annotations

from dataclasses import dataclass

SECONDS_PER_DAY = 86_400


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
        """The bucket at `now`. A clock that steps back adds nothing and does not move `updated` back."""
        if now <= self.updated:
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
        """The count on `day`: a new day starts from zero."""
        return self if day == self.day else QuotaCount(day, 0)
