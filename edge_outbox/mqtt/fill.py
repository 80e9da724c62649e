"""What a connection's pump queues for its session from the store: statuses from the feed, and the parts of
a replay request (an app's stored statuses again, for the client that asked only). The reads are handed in;
the connection sends what is queued."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from edge_outbox.mqtt.session import Message, Session
from edge_outbox.status import StatusFeed, status_payload, status_topic

REPLAY_CHUNK = 500  # stored statuses read, and queued, per step of a replay request

ReadAppStatuses = Callable[[str, int, int], Awaitable[list[tuple[int, str, bytes]]]]  # (app, after, limit)


@dataclass(slots=True)
class Replay:
    """A replay request under way: `app`'s stored statuses after seq `after`; `sent` so far."""

    app: str
    after: int
    sent: int = 0


async def queue_statuses(session: Session, feed: StatusFeed) -> bool:
    """Queue the statuses the session has room for (or pass them, when it wants none); whether there may be
    more."""
    cursor = session.status
    if cursor.sent >= feed.head:
        return False
    if not session.wants_statuses:
        cursor.passed(feed.head)
        return False
    room = session.space()
    if room <= 0:
        return False
    events = await feed.read(cursor.sent, room)
    for event in events:
        session.offer(status_topic(event.app, event.id), status_payload(event), 1, seq=event.seq)
    return bool(events)


async def queue_replay(session: Session, replay: Replay, read: ReadAppStatuses) -> bool:
    """Queue the next part of `replay` (what the session subscribes to, at QoS 1 at most); whether it is done."""
    rows = await read(replay.app, replay.after, REPLAY_CHUNK)
    for seq, topic, payload in rows:
        granted = session.granted_qos(topic)
        if granted is not None:
            session.enqueue(Message(topic, payload, min(1, granted)))
            replay.sent += 1
        replay.after = seq
    return len(rows) < REPLAY_CHUNK
