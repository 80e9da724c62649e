"""Persistent sessions of local apps, kept in the outbox database (the endpoint's SessionsPort).

The SQL functions run inside the store's group commit, like those of edge_outbox.ops.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from edge_outbox import ops
from edge_outbox.mqtt.session import SessionRecord
from edge_outbox.status import status_payload, status_topic
from edge_outbox.store import Store


def load_sessions(conn: sqlite3.Connection, expire_before: int) -> list[SessionRecord]:
    """Persistent sessions seen since `expire_before` (ms); older ones are deleted (session expiry)."""
    conn.execute("DELETE FROM sessions WHERE last_seen < ?", (expire_before,))
    rows = conn.execute("SELECT client_id, username, subscriptions, status_seq, last_seen FROM sessions")
    return [SessionRecord(r[0], r[1], json.loads(r[2]), r[3], r[4]) for r in rows]


def save_session(conn: sqlite3.Connection, session: SessionRecord, now: int) -> None:
    conn.execute(
        "INSERT INTO sessions(client_id, username, subscriptions, status_seq, last_seen) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT(client_id) DO UPDATE SET username = excluded.username,"
        " subscriptions = excluded.subscriptions, status_seq = excluded.status_seq, last_seen = excluded.last_seen",
        (session.client_id, session.username, json.dumps(session.subscriptions), session.status_seq, now),
    )  # fmt: skip


def delete_session(conn: sqlite3.Connection, client_id: str) -> None:
    conn.execute("DELETE FROM sessions WHERE client_id = ?", (client_id,))


def save_cursors(conn: sqlite3.Connection, cursors: dict[str, int], now: int) -> None:
    """Each persistent session's status position, and that it was seen now (it is connected)."""
    conn.executemany(
        "UPDATE sessions SET status_seq = ?, last_seen = ? WHERE client_id = ?",
        [(seq, now, client_id) for client_id, seq in cursors.items()],
    )


def oldest_cursor(conn: sqlite3.Connection) -> int | None:
    """The lowest status position of any persistent session: events after it are still wanted."""
    value = conn.execute("SELECT MIN(status_seq) FROM sessions").fetchone()[0]
    return None if value is None else int(value)


class StoredSessions:
    """Sessions unseen for `expiry_ms` are dropped when the outbox starts (and by housekeeping)."""

    def __init__(self, store: Store, clock_ms: Callable[[], int], expiry_ms: int) -> None:
        self._store = store
        self._clock_ms = clock_ms
        self._expiry_ms = expiry_ms

    async def load(self) -> list[SessionRecord]:
        return await self._store.call(load_sessions, self._clock_ms() - self._expiry_ms)

    async def save(self, record: SessionRecord) -> None:
        await self._store.call(save_session, record, self._clock_ms())

    async def delete(self, client_id: str) -> None:
        await self._store.call(delete_session, client_id)

    async def read_app_statuses(self, app: str, after: int, limit: int) -> list[tuple[int, str, bytes]]:
        events = await self._store.read(ops.app_statuses, app, after, limit)
        return [(e.seq, status_topic(e.app, e.id), status_payload(e)) for e in events]
