"""Persistent sessions of local apps, kept in the outbox database (the endpoint's SessionsPort).

The SQL functions run inside the store's group commit, like those of edge_outbox.ops. Writes are
coalesced: what the endpoint asks while one write waits for the writer thread joins it, one row per
session however many SUBSCRIBEs came meanwhile (each a JSON copy of the session's subscriptions had
been an operation of its own on the thread that commits every app's intents).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable

from edge_outbox import event_log, qos2_taken
from edge_outbox.mqtt.session import SessionRecord
from edge_outbox.status import status_payload, status_topic
from edge_outbox.store import Store


def drop_expired(conn: sqlite3.Connection, now: int, expiry_ms: int) -> None:
    """Delete the persistent sessions unseen for their expiry (at most `expiry_ms`)."""
    conn.execute("DELETE FROM sessions WHERE last_seen + MIN(COALESCE(expiry_ms, ?1), ?1) < ?2", (expiry_ms, now))


def load_sessions(conn: sqlite3.Connection, now: int, expiry_ms: int) -> list[SessionRecord]:
    """Persistent sessions seen within their expiry (at most `expiry_ms`); older ones are deleted."""
    drop_expired(conn, now, expiry_ms)
    taken = qos2_taken.load(conn)
    rows = conn.execute("SELECT client_id, username, subscriptions, status_seq, last_seen, expiry_ms FROM sessions")
    return [SessionRecord(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], taken.get(r[0], ())) for r in rows]


def save_sessions(
    conn: sqlite3.Connection,
    records: Iterable[tuple[str, SessionRecord | None]],
    seen: dict[str, int],
    released: Iterable[qos2_taken.Key] = (),
) -> None:
    """Write each session's record (None: delete it), then when sessions still stored were last seen; free the
    QoS 2 packet ids `released`."""
    qos2_taken.release(conn, released)
    for client_id, record in records:
        if record is None:
            conn.execute("DELETE FROM sessions WHERE client_id = ?", (client_id,))
            qos2_taken.forget(conn, client_id)
            continue
        conn.execute(
            "INSERT INTO sessions(client_id, username, subscriptions, status_seq, last_seen, expiry_ms)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(client_id) DO UPDATE SET username = excluded.username,"
            " subscriptions = excluded.subscriptions, status_seq = excluded.status_seq,"
            " last_seen = excluded.last_seen, expiry_ms = excluded.expiry_ms",
            (record.client_id, record.username, json.dumps(record.subscriptions), record.status_seq,
             record.last_seen, record.expiry_ms),
        )  # fmt: skip
    conn.executemany("UPDATE sessions SET last_seen = ? WHERE client_id = ?", [(at, cid) for cid, at in seen.items()])


def save_cursors(conn: sqlite3.Connection, cursors: dict[str, int]) -> None:
    """Each persistent session's status position (when it was last seen is the endpoint's to write)."""
    conn.executemany(
        "UPDATE sessions SET status_seq = ? WHERE client_id = ?",
        [(seq, client_id) for client_id, seq in cursors.items()],
    )


def oldest_cursor(conn: sqlite3.Connection) -> int | None:
    """The lowest status position of any persistent session: events after it are still wanted."""
    value = conn.execute("SELECT MIN(status_seq) FROM sessions").fetchone()[0]
    return None if value is None else int(value)


Written = dict[str, SessionRecord | None]  # the records of one write (None: deleted)
_Kept = tuple[str | None, dict[str, int], int | None]


def _kept(record: SessionRecord) -> _Kept:
    """What a save writes that nothing else does: the app, the subscriptions, the expiry."""
    return record.username, dict(record.subscriptions), record.expiry_ms


class StoredSessions:
    """Sessions unseen for their expiry (at most `expiry_ms`) are dropped at start and, by the endpoint,
    while it runs."""

    def __init__(self, store: Store, clock_ms: Callable[[], int], expiry_ms: int) -> None:
        self._store = store
        self._clock_ms = clock_ms
        self.expiry_ms = expiry_ms
        # What waits for the next write; taken by the writer thread, hence the lock.
        self._lock = threading.Lock()
        self._records: dict[str, SessionRecord | None] = {}
        self._seen: dict[str, int] = {}
        self._released: set[qos2_taken.Key] = set()
        self._write: asyncio.Future[Written] | None = None  # the write not yet taken by the writer thread
        self.writes = 0  # store operations made (for tests)
        # What the database holds of each session apart from its position and when it was seen (those have writes
        # of their own), as of the last write that committed: a SUBSCRIBE that changes none of it writes nothing.
        # An app that resumes its session subscribes again to what it holds; on a full disk that save failed and
        # closed it, at each try, and its publishes were sent again each time.
        self._stored: dict[str, _Kept] = {}

    def now_ms(self) -> int:
        return self._clock_ms()

    async def load(self) -> list[SessionRecord]:
        records = await self._store.call(load_sessions, self._clock_ms(), self.expiry_ms)
        self._stored = {r.client_id: _kept(r) for r in records}
        return records

    async def save(self, record: SessionRecord, *, if_changed: bool = False) -> None:
        """Write the session; `if_changed` (its subscriptions changed): not if the database holds the same already."""
        if if_changed and self._stored.get(record.client_id) == _kept(record):
            return
        with self._lock:
            self._stored.pop(record.client_id, None)  # unknown until this write commits
            self._records[record.client_id] = record
            self._seen.pop(record.client_id, None)
        await self._written()

    async def delete(self, client_id: str) -> None:
        with self._lock:
            self._stored.pop(client_id, None)
            self._records[client_id] = None
            self._seen.pop(client_id, None)
        await self._written()

    async def seen(self, client_id: str, at: int) -> None:
        """The session's client was there at `at` (ms)."""
        with self._lock:
            record = self._records.get(client_id)
            if record is not None:
                self._records[client_id] = SessionRecord(
                    record.client_id, record.username, record.subscriptions, record.status_seq, at, record.expiry_ms
                )
            elif client_id not in self._records:
                self._seen[client_id] = at
        await self._written()

    async def release(self, client_id: str, packet_id: int) -> None:
        """A QoS 2 packet id taken with its intent is free again (its PUBREL came); returns once committed."""
        with self._lock:
            self._released.add((client_id, packet_id))
        await self._written()

    async def _written(self) -> None:
        with self._lock:
            write = self._write
            if write is None:
                write = self._write = asyncio.ensure_future(self._store.call(self._take_and_save))
                write.add_done_callback(self._done)
                self.writes += 1
        await asyncio.shield(write)

    def _done(self, write: asyncio.Future[Written]) -> None:
        with self._lock:
            if self._write is write:  # failed before the writer took it (the store stopped): the next one tries
                self._write = None
        if write.cancelled() or write.exception() is not None:
            return
        with self._lock:
            for client_id, record in write.result().items():  # committed: what the database holds, unless
                if record is not None and client_id not in self._records:  # a newer write of it waits
                    self._stored[client_id] = _kept(record)

    def _take_and_save(self, conn: sqlite3.Connection) -> Written:
        """On the writer thread: everything asked until now, in one operation."""
        with self._lock:
            records, seen, released = self._records, self._seen, self._released
            self._records, self._seen, self._released, self._write = {}, {}, set(), None
        save_sessions(conn, records.items(), seen, released)
        return records

    async def read_app_statuses(self, app: str, after: int, limit: int) -> list[tuple[int, str, bytes]]:
        events = await self._store.read(event_log.app_statuses, app, after, limit)
        return [(e.seq, status_topic(e.app, e.id), status_payload(e)) for e in events]
