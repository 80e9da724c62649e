"""How often enrollment may be tried: token buckets per source address and overall, and a log throttle.

Pure, with `now` passed in. Every request takes a token, whatever its outcome: a wrong guess costs
the bridge a key parse and an fsync'd transaction as much as a right one does. The state is in this
process: behind a load balancer each node limits what reaches it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

from cloud_bridge.ratelimit import Bucket, RateRule
from intent_contract.accept_limits import address_key


@dataclass(frozen=True, slots=True)
class EnrollLimits:
    """Requests per minute from one address (an IPv6 /64 counts as one) and from everywhere together."""

    per_address_per_minute: float = 10.0
    per_minute: float = 600.0
    # Addresses remembered at once; the least recently seen is forgotten first (it starts full again).
    max_addresses: int = 10_000

    def __post_init__(self) -> None:
        if self.per_address_per_minute <= 0 or self.per_minute <= 0 or self.max_addresses < 1:
            raise ValueError("enrollment limits must be positive")

    def rules(self) -> tuple[RateRule, RateRule]:
        """(per address, overall); each bucket holds one minute's worth."""
        return (
            RateRule(self.per_address_per_minute / 60.0, max(1, math.floor(self.per_address_per_minute))),
            RateRule(self.per_minute / 60.0, max(1, math.floor(self.per_minute))),
        )


@dataclass(slots=True)
class EnrollGate:
    """Decides whether one more enrollment request may be served now."""

    limits: EnrollLimits = field(default_factory=EnrollLimits)
    _addresses: OrderedDict[str, Bucket] = field(default_factory=OrderedDict)
    _overall: Bucket | None = None

    def admit(self, address: str | None, now: float) -> float | None:
        """None when the request may go on (it took a token from both buckets), else seconds to wait."""
        per_address, overall = self.limits.rules()
        key = address_key(address)
        stored = self._addresses.pop(key, None)
        mine = (stored if stored is not None else Bucket.full(per_address, now)).refilled(per_address, now)
        everyone = (self._overall or Bucket.full(overall, now)).refilled(overall, now)
        wait = max(mine.wait_seconds(per_address), everyone.wait_seconds(overall))
        if wait == 0.0:
            mine, everyone = mine.take(), everyone.take()
        self._addresses[key] = mine  # most recently seen last
        self._overall = everyone
        while len(self._addresses) > self.limits.max_addresses:
            self._addresses.popitem(last=False)
        return None if wait == 0.0 else wait
