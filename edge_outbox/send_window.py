"""What the forwarder has in flight to the bridge on one connection, and how much more may go. Pure.

At most `window` intents and `max_batches` batch messages are unacknowledged at once (the bridge
queues a bounded number of messages per device and drops the rest: intent_contract.wire). An intent
not acknowledged within `ack_timeout_ms` leaves the window and may be sent again, as may one sent on
an earlier connection: the bridge deduplicates by id.
"""

from __future__ import annotations


class SendWindow:
    def __init__(self, window: int, max_batches: int, ack_timeout_ms: int) -> None:
        self._window = window
        self._max_batches = max_batches
        self._ack_timeout_ms = ack_timeout_ms
        self._inflight: dict[str, int] = {}  # id -> ms sent
        self._batches: list[list[str]] = []  # ids of each batch still waiting for an ack
        self._since = 0  # ms: the connection started

    def reset(self, now: int) -> None:
        """A new connection: nothing is in flight on it."""
        self._inflight.clear()
        self._batches.clear()
        self._since = now

    def expire(self, now: int) -> None:
        """Forget what was not acknowledged within the ack timeout (it may go again), and what was sent after
        `now`: before the clock stepped back, so it would never have timed out on this connection."""
        stale = now - self._ack_timeout_ms
        for intent_id in [i for i, at in self._inflight.items() if at < stale or at > now]:
            del self._inflight[intent_id]
        self._batches = [b for b in self._batches if any(i in self._inflight for i in b)]

    def room(self) -> int:
        """How many intents the next batch may carry (0: wait for acks)."""
        if len(self._batches) >= self._max_batches:
            return 0
        return max(0, self._window - len(self._inflight))

    def sent_before(self, now: int) -> int:
        """Intents last sent before this (ms) are due again: on an earlier connection, or unacknowledged."""
        return max(self._since, now - self._ack_timeout_ms)

    def sent(self, ids: list[str], now: int) -> None:
        self._inflight.update((i, now) for i in ids)
        self._batches.append(list(ids))

    def acked(self, intent_id: str) -> bool:
        """An ack for `intent_id`; True when it was in flight on this connection."""
        return self._inflight.pop(intent_id, None) is not None

    @property
    def in_flight(self) -> int:
        return len(self._inflight)
