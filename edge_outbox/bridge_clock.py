"""The bridge's clock as this device knows it: an offset learned from the bridge's answers. Pure.

A device whose clock is wrong (a dead RTC battery, a site without NTP) still has to sign tokens the
bridge accepts and send deadlines that mean what the app meant. Every answer from the bridge carries
the bridge's time (enrollment, `GET /v1/device`, receipts), and each answer proves bounds on the
offset (bridge time minus this device's clock): the bridge read its clock after the device sent its
question (or made its bundle) and before the device read the answer. An online answer bounds it
within a round trip and sets it; an answer that travelled on a stick for days only moves it into its
bounds, which still catches a clock off by more than the trip took (a clock reset to 2000, a clock a
day ahead).

Stored times stay in the device's own clock (its deadlines run on it); only what goes to the bridge
is corrected: token times, and each envelope's `created` and `expires`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from edge_outbox.errors import ConfigError
from intent_contract.timefmt import MAX_DURATION_S

# An answer whose bounds are at most this far apart (a round trip online) sets the offset to their middle.
EXACT_MS = 5_000
# The farthest the bridge's clock is taken to be from this device's: a dead RTC battery is decades off, not
# centuries. An answer past it (a bridge's time in microseconds, say) is a fault of the answer: believed, it
# put the bridge's time of day past any date Python can write, and the forwarder died on it at every start.
MAX_OFFSET_MS = MAX_DURATION_S * 1000


@dataclass(frozen=True, slots=True)
class TimeSample:
    """Bounds on the offset (ms) that one answer of the bridge proves; None: no bound on that side."""

    low: int | None
    high: int | None
    source: str

    @classmethod
    def between(cls, bridge_ms: int, sent_local_ms: int, received_local_ms: int, source: str) -> TimeSample:
        """The bridge read `bridge_ms` after we read `sent_local_ms` and before `received_local_ms`."""
        return cls(bridge_ms - received_local_ms, bridge_ms - sent_local_ms, source)

    @classmethod
    def receipt(
        cls,
        made_at: int,
        imported_local_ms: int,
        bundle_made_local: int | None,
        bundle_imported: int | None,
        source: str,
    ) -> TimeSample:
        """A receipt made at bridge time `made_at`, read here at `imported_local_ms`; when it answers a bundle
        made here at `bundle_made_local` and imported there at `bundle_imported`, that bounds it from above."""
        high = None if bundle_made_local is None or bundle_imported is None else bundle_imported - bundle_made_local
        return cls(made_at - imported_local_ms, high, source)


@dataclass(frozen=True, slots=True)
class BridgeClock:
    offset_ms: int = 0  # bridge time minus this device's clock
    source: str = ""  # the answer it was last moved by
    learned_at: int = 0  # this device's clock (ms) then

    def bridge_ms(self, local_ms: int) -> int:
        """The bridge's time when this device's clock reads `local_ms`."""
        return local_ms + self.offset_ms

    def learn(self, sample: TimeSample, local_ms: int) -> BridgeClock:
        """The clock after `sample`: set within a round trip, or moved into looser bounds; unchanged if inside,
        or if it would put the bridge more than MAX_OFFSET_MS (100 years) from this device's clock."""
        low, high = sample.low, sample.high
        if low is not None and high is not None:
            if low > high:
                return self  # bounds that cross: this device's clock was stepped during the exchange; learn nothing
            offset = (low + high) // 2 if high - low <= EXACT_MS else min(max(self.offset_ms, low), high)
        else:
            offset = max(self.offset_ms, low) if low is not None else self.offset_ms
            offset = min(offset, high) if high is not None else offset
        if offset == self.offset_ms or abs(offset) > MAX_OFFSET_MS:
            return self
        return BridgeClock(offset, sample.source, local_ms)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | None) -> BridgeClock:
        if not text:
            return cls()
        try:
            data = json.loads(text)
            clock = cls(int(data["offset_ms"]), str(data["source"]), int(data["learned_at"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"the stored bridge clock is damaged ({exc})") from None
        # Learned by an older version from an answer past the bound: forgotten, the next answer sets it again.
        return clock if abs(clock.offset_ms) <= MAX_OFFSET_MS else cls()
