"""How big the next batch may be on this link: what it showed it carries in a few seconds. Pure.

A batch goes to the bridge as one MQTT packet, and a packet must be through the link within about a minute:
paho queues its PINGREQ behind the packet being written and closes the connection when no PINGRESP comes
within its keepalive (30 s) of it. A full batch (512 KiB) needs 9 KB/s for that, and the forwarder used to send
one whatever the link (and wait 15 s for its PUBACK): over a rural cellular or satellite link of a few KB/s,
every connection was dropped mid-batch and the same batch sent again on the next, for ever, nothing delivered.

So batches start small (FIRST_BYTES) and double while one goes through (its PUBACK back) within half of
TARGET_S; one that took longer than TARGET_S sizes the next to what the link carried in TARGET_S; a connection
lost with a batch on the way halves the next. A batch carries at least one intent, whatever its size: an
intent of 256 KiB needs about 5 KB/s.
"""

from __future__ import annotations

TARGET_S = 10.0  # a batch's time from publish to PUBACK, at most (well within the minute a packet has)
FIRST_BYTES = 16 * 1024  # the first batch of a forwarder (encoded bytes)
MIN_BYTES = 1024
_GUESS_PER_ITEM = 256  # encoded bytes per intent before a batch has shown it


class LinkPace:
    def __init__(self, max_items: int, max_bytes: int) -> None:
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._budget = min(FIRST_BYTES, max_bytes)  # encoded bytes the next batch may take
        self._per_item = _GUESS_PER_ITEM
        self._on_the_way = False  # a batch was published and its PUBACK has not come

    @property
    def budget(self) -> int:
        return self._budget

    def limits(self, room: int) -> tuple[int, int]:
        """(intents, payload bytes) the next batch may carry, within `room` intents of the send window."""
        items = max(1, min(self._max_items, room, self._budget // self._per_item))
        return items, min(self._max_bytes, self._budget)

    def sending(self) -> None:
        self._on_the_way = True

    def went(self, encoded: int, items: int, seconds: float) -> None:
        """A batch of `encoded` bytes and `items` intents took `seconds` from publish to PUBACK."""
        self._on_the_way = False
        self._per_item = max(1, encoded // max(items, 1))
        if seconds > TARGET_S:
            self._budget = max(MIN_BYTES, int(encoded * TARGET_S / seconds))
        elif seconds <= TARGET_S / 2 and encoded * 2 >= self._budget:
            self._budget = min(self._max_bytes, self._budget * 2)

    def link_lost(self) -> None:
        """The connection ended in a failure: a batch on the way may have been too big for the link."""
        if self._on_the_way:
            self._budget = max(MIN_BYTES, self._budget // 2)
        self._on_the_way = False
