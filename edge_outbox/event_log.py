"""The status event log and the meta table, as plain functions on a sqlite3 connection.

Events are written by the database's triggers (edge_outbox.db); these read them for the status consumers
(edge_outbox.status) and the store's report after each group.
"""

from __future__ import annotations

import sqlite3
from typing import NamedTuple

from edge_outbox.db import EVENT_COLUMNS, StatusEvent
from edge_outbox.states import FINAL, State, sql_set


def events_after(conn: sqlite3.Connection, seq: int, limit: int = 5000) -> list[StatusEvent]:
    rows = conn.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
    return [StatusEvent.from_db(r) for r in rows]


_EVENTS_SEEN = (
    f"SELECT MAX(seq), MAX(state = '{State.ACCEPTED.value}'), MAX(state IN {sql_set(FINAL)}) FROM events WHERE seq > ?"
)


class EventsSeen(NamedTuple):
    """What the status log gained after a seq, as `Store` reports it after each group."""

    head: int  # the newest event's seq
    accepted: bool  # some intent was accepted: the forwarder has work
    final: bool  # some intent reached a final state: the queue may have room
    events: list[StatusEvent] | None  # the events themselves, when a consumer reads them


def events_seen(conn: sqlite3.Connection, seq: int, *, read: bool) -> EventsSeen | None:
    """The events after `seq`, or None if there are none.

    With `read` False the events are not read, only their newest seq and two flags, in one aggregate
    statement: no row reaches Python (bench/findings.md F42).
    """
    if read:
        events = events_after(conn, seq)
        if not events:
            return None
        states = {e.state for e in events}
        return EventsSeen(events[-1].seq, State.ACCEPTED in states, not FINAL.isdisjoint(states), events)
    head, accepted, final = conn.execute(_EVENTS_SEEN, (seq,)).fetchone()
    return None if head is None else EventsSeen(head, bool(accepted), bool(final), None)


def last_event_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?", (key, value, value)
    )


def app_statuses(conn: sqlite3.Connection, app: str, after: int, limit: int) -> list[StatusEvent]:
    """An app's stored status events after `after`, oldest first (for a replay request)."""
    rows = conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? AND app = ? ORDER BY seq LIMIT ?", (after, app, limit)
    )
    return [StatusEvent.from_db(r) for r in rows]
