"""Status messages to apps: the outbox's status log, read by every consumer from its own position.

Every status is an event row committed with the state change it reports (edge_outbox.db), so a
status can be lost only if the change is. The store hands each committed group's events to
`StatusFeed.on_events`; the feed keeps the newest in memory and reads older ones from the database.
While no consumer reads statuses (`StatusFeed.wanted` False: no app subscribes to them), the store
reads only the newest seq (`StatusFeed.skip_to`), and a consumer that comes later reads from the
database what it has not seen.
A consumer (an app's session at the embedded endpoint, or the attached broker) reads from the
position it last had acknowledged, so what was committed while it, or the outbox, was away is sent
when it is back: at least once, in sequence order, each message carrying its `seq`.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Awaitable, Callable

from edge_outbox.db import StatusEvent
from edge_outbox.intake_rules import status_topic
from intent_contract.timefmt import format_ms

__all__ = ["StatusFeed", "status_payload", "status_topic"]

ReadAfter = Callable[[int, int], Awaitable[list[StatusEvent]]]


# json's own string encoder (C; ASCII, as json.dumps writes by default).
_string: Callable[[str], str] = json.encoder.encode_basestring_ascii


def status_payload(event: StatusEvent) -> bytes:
    """The JSON an app receives: {"id", "kind", "state", "code", "detail", "at", "seq"}.

    Written out, the bytes `json.dumps` gives with separators (",", ":"): one for every state change an
    app is told of, and `json.dumps` took 3.5 us of it, this 1.0 us (bench/findings.md F34).
    """
    return (
        f'{{"id":{_string(event.id)},"kind":{_string(event.kind)},"state":{_string(str(event.state))},'
        f'"code":{_string(event.code)},"detail":{_string(event.detail)},"at":{_string(format_ms(event.at))},'
        f'"seq":{int(event.seq)}}}'
    ).encode()


# A read of statuses the store failed (a full disk fails the reads grouped with its commits) is tried again
# after this, by the endpoint's connections and the attach client alike.
STATUS_RETRY_S = 1.0


class StatusFeed:
    """The tail of the status log: `head` is the newest committed event's seq."""

    def __init__(self, read_after: ReadAfter, head: int, keep: int = 20_000) -> None:
        self._read_after = read_after
        self.head = head
        self._keep = keep
        self._ring: list[StatusEvent] = []
        self._seqs: list[int] = []
        self._complete_after = head  # the ring holds every event after this seq
        self._listeners: list[Callable[[], None]] = []
        # Whether some consumer reads statuses, so the store should hand over the events themselves. Set
        # on the event loop, read on the store's writer thread; its transport narrows it (the endpoint: an
        # app subscribes to statuses).
        self.wanted = True

    def listen(self, callback: Callable[[], None]) -> None:
        """Call `callback` (no arguments) whenever new events arrive."""
        self._listeners.append(callback)

    def on_events(self, events: list[StatusEvent]) -> None:
        """New committed events, in seq order (from the store's writer, via the event loop)."""
        for event in events:
            if event.seq > self.head:
                self._ring.append(event)
                self._seqs.append(event.seq)
                self.head = event.seq
        if len(self._ring) > 2 * self._keep:  # trim in halves: amortised O(1) per event
            cut = len(self._ring) - self._keep
            self._complete_after = self._seqs[cut - 1]
            del self._ring[:cut], self._seqs[:cut]
        for callback in self._listeners:
            callback()

    def skip_to(self, head: int) -> None:
        """Events up to `head` were committed and not read (nobody wanted them): from now on the ring holds
        only what comes after, and a read of anything older goes to the database."""
        if head > self.head:
            self.head = head
            self._complete_after = head
            self._ring.clear()
            self._seqs.clear()
        for callback in self._listeners:
            callback()

    async def read(self, after: int, limit: int) -> list[StatusEvent]:
        """Up to `limit` events with seq > `after`, oldest first."""
        if after >= self.head or limit <= 0:
            return []
        if after >= self._complete_after:
            start = bisect.bisect_right(self._seqs, after)
            return self._ring[start : start + limit]
        return await self._read_after(after, limit)
