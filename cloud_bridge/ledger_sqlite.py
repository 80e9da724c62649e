"""SqliteLedger: the ledger on one SQLite file (WAL, synchronous=FULL) with group commit.

One dedicated thread owns the connection. Calls queue an operation and await its future; the thread
takes every operation waiting at that moment, runs them in ONE transaction (each inside a savepoint, so
one failing call does not undo the others), commits once (one fsync), then resolves the futures. While
a commit is on disk, new calls pile up and share the next one: that is what lets thousands of intents
per second be admitted durably on one disk.

`decide` (see `admit`) runs on that thread, serialized with every other `decide` call.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import msgpack

from cloud_bridge.audit import AuditEvent, AuditQuery, AuditRecord
from cloud_bridge.errors import BridgeError, TransientError
from cloud_bridge.ledger import (
    AUDIT_EVENTS,
    DecisionLike,
    DeviceLike,
    EntryState,
    LedgerEntry,
    admission,
    clip_detail,
    is_duplicate,
)
from intent_contract.codec import Ack, AckState, Envelope
from intent_contract.sqlite_writer import GroupCommitWriter, WriterHooks

logger = logging.getLogger(__name__)

_MAX_BATCH = 1000  # operations per transaction; bounds how long one commit holds callers
_LIVE = "('queued', 'running')"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS intents (
    seq INTEGER PRIMARY KEY, device_id TEXT NOT NULL, intent_id TEXT NOT NULL, tenant TEXT NOT NULL,
    app TEXT NOT NULL, kind TEXT NOT NULL, payload BLOB NOT NULL, attempt INTEGER NOT NULL,
    priority INTEGER NOT NULL, created INTEGER NOT NULL, expires INTEGER, state TEXT NOT NULL,
    code TEXT NOT NULL, detail TEXT NOT NULL, tries INTEGER NOT NULL, next_run REAL NOT NULL,
    overrides BLOB NOT NULL, confirmed INTEGER NOT NULL, updated REAL NOT NULL,
    UNIQUE (device_id, intent_id)
);
CREATE INDEX IF NOT EXISTS intents_due ON intents (kind, priority DESC, seq) WHERE state = 'queued';
CREATE INDEX IF NOT EXISTS intents_running ON intents (state) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS intents_unconfirmed ON intents (device_id, seq)
    WHERE confirmed = 0 AND state NOT IN {_LIVE};
CREATE INDEX IF NOT EXISTS intents_purge ON intents (updated) WHERE confirmed = 1;
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, at REAL NOT NULL, device_id TEXT NOT NULL, tenant TEXT NOT NULL,
    intent_id TEXT NOT NULL, kind TEXT NOT NULL, event TEXT NOT NULL, integration TEXT NOT NULL,
    code TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE INDEX IF NOT EXISTS audit_device ON audit (device_id, at);
"""

_Fn = Callable[[sqlite3.Connection], Any]
T = TypeVar("T")


def _pack(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def _entry(row: sqlite3.Row) -> LedgerEntry:
    fields = dict(zip(row.keys(), row, strict=True))
    del fields["seq"]
    fields.update(
        payload=msgpack.unpackb(row["payload"], raw=False),
        overrides=msgpack.unpackb(row["overrides"], raw=False),
        state=EntryState(row["state"]),
        confirmed=bool(row["confirmed"]),
    )
    return LedgerEntry(**fields)


_AUDIT_INSERT = (
    "INSERT INTO audit (at, device_id, tenant, intent_id, kind, event, integration, code, detail)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_IN_CHUNK = 500  # ids per IN (...) query, under SQLite's bound-parameter limit


def _audit_row(
    conn: sqlite3.Connection,
    at: float,
    who: tuple[str, str, str, str],
    event: AuditEvent,
    *,
    integration: str = "",
    code: str,
    detail: str,
) -> None:
    """Insert an audit row; `who` is (device_id, tenant, intent_id, kind)."""
    conn.execute(_AUDIT_INSERT, (at, *who, str(event), integration, code, detail))


def _audit_record(row: sqlite3.Row) -> AuditRecord:
    fields = dict(zip(row.keys(), row, strict=True))
    del fields["seq"]
    return AuditRecord(**{**fields, "event": AuditEvent(row["event"])})


def _who(entry: LedgerEntry) -> tuple[str, str, str, str]:
    return (entry.device_id, entry.tenant, entry.intent_id, entry.kind)


def _row_ack(row: Mapping[str, Any]) -> Ack:
    state = EntryState(row["state"])
    final = state.final
    return Ack(
        id=row["intent_id"],
        state=state.ack_state,
        code=row["code"] if final else "",
        detail=row["detail"] if final else "",
        at=int(row["updated"] * 1000),
        app=row["app"],
    )


def _marks(values: Collection[str]) -> str:
    return ",".join("?" * len(values))


_UPSERT = (
    "INSERT INTO intents (device_id, intent_id, tenant, app, kind, payload, attempt, priority, created, expires,"
    " state, code, detail, tries, next_run, overrides, confirmed, updated)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, 0, ?)"
    " ON CONFLICT (device_id, intent_id) DO UPDATE SET tenant = excluded.tenant, app = excluded.app,"
    " kind = excluded.kind, payload = excluded.payload, attempt = excluded.attempt, priority = excluded.priority,"
    " created = excluded.created, expires = excluded.expires, state = excluded.state, code = excluded.code,"
    " detail = excluded.detail, tries = 0, next_run = excluded.next_run, overrides = excluded.overrides,"
    " confirmed = 0, updated = excluded.updated"
)


def _admit(
    conn: sqlite3.Connection,
    device: DeviceLike,
    envelopes: list[Envelope],
    decide: Callable[[Envelope], DecisionLike],
    now: float,
) -> list[Ack]:
    """One batch: existing rows read in one query per chunk, new rows and audit rows written with
    one executemany each (a query and two inserts per intent held admission near 4,000/s)."""
    ids = list(dict.fromkeys(env.id for env in envelopes))
    known: dict[str, Mapping[str, Any]] = {}
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        for row in conn.execute(
            "SELECT intent_id, app, state, attempt, code, detail, updated FROM intents"
            f" WHERE device_id = ? AND intent_id IN ({_marks(chunk)})",
            (device.device_id, *chunk),
        ):
            known[row["intent_id"]] = row
    acks, upserts, audits = [], [], []
    for env in envelopes:
        row = known.get(env.id)
        if row is not None and is_duplicate(EntryState(row["state"]), row["attempt"], env.attempt):
            acks.append(_row_ack(row))  # a duplicate: acked again, never decided or run again
            continue
        state, code, detail, overrides = admission(env, decide, now)
        upserts.append(
            (device.device_id, env.id, device.tenant, env.app, env.kind, _pack(env.payload), env.attempt,
             env.priority, env.created, env.expires, str(state), code, detail, now, _pack(overrides), now)
        )  # fmt: skip
        audits.append(
            (now, device.device_id, device.tenant, env.id, env.kind, str(AUDIT_EVENTS[state]), "", code, detail)
        )
        # The same id again later in this batch is a duplicate of this row.
        known[env.id] = {"intent_id": env.id, "app": env.app, "state": str(state), "attempt": env.attempt,
                         "code": code, "detail": detail, "updated": now}  # fmt: skip
        acks.append(Ack(env.id, state.ack_state, code, detail, int(now * 1000), env.app))
    conn.executemany(_UPSERT, upserts)
    conn.executemany(_AUDIT_INSERT, audits)
    return acks


class SqliteLedger:
    """The Ledger protocol on a SQLite file; `commits` counts write transactions (for tests, metrics)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._writer = GroupCommitWriter(
            self._connect,
            name="ledger-writer",
            max_group=_MAX_BATCH,
            hooks=WriterHooks(convert=_convert, expected=(BridgeError,)),
        )

    def __repr__(self) -> str:
        return f"SqliteLedger({str(self.path)!r})"

    @property
    def commits(self) -> int:
        """Write transactions so far (for tests and metrics)."""
        return self._writer.commits

    async def open(self) -> None:
        """Open (creating if needed) the database and start the writer thread."""
        if self._writer.running:
            raise RuntimeError("ledger already open")
        await self._writer.start()

    async def close(self) -> None:
        """Run what is queued, stop the thread and close the database."""
        await self._writer.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.executescript(_SCHEMA)
        return conn

    async def _call(self, fn: Callable[[sqlite3.Connection], T], *, writes: bool = True) -> T:
        if not self._writer.running:
            raise RuntimeError("ledger is not open")
        return await self._writer.call(fn, writes=writes)

    # -- admission --------------------------------------------------------------------------------

    async def admit(
        self,
        device: DeviceLike,
        envelopes: Sequence[Envelope],
        decide: Callable[[Envelope], DecisionLike],
        now: float,
    ) -> list[Ack]:
        """Record a batch in one durable transaction; see `Ledger.admit`. `decide` runs on the writer thread."""
        envs = list(envelopes)
        return await self._call(lambda c: _admit(c, device, envs, decide, now))

    async def unconfirmed(self, device_id: str) -> list[Ack]:
        """Final results the edge has not confirmed yet, oldest first."""

        def run(conn: sqlite3.Connection) -> list[Ack]:
            rows = conn.execute(
                "SELECT intent_id, app, state, code, detail, updated FROM intents"
                f" WHERE device_id = ? AND confirmed = 0 AND state NOT IN {_LIVE} ORDER BY seq",
                (device_id,),
            ).fetchall()
            return [_row_ack(row) for row in rows]

        return await self._call(run, writes=False)

    async def confirm(self, device_id: str, ids: Sequence[str]) -> int:
        """Mark final results as applied by the edge; unknown, live or already confirmed ids are ignored."""
        params = [(device_id, i) for i in dict.fromkeys(ids)]

        def run(conn: sqlite3.Connection) -> int:
            cursor = conn.executemany(
                "UPDATE intents SET confirmed = 1"
                f" WHERE device_id = ? AND intent_id = ? AND confirmed = 0 AND state NOT IN {_LIVE}",
                params,
            )
            return cursor.rowcount

        if not params:
            return 0
        return await self._call(run)

    async def usage_since(self, since: float) -> dict[tuple[str, str], int]:
        """(device_id, kind) -> intents admitted by policy since `since` (from the audit's accept rows)."""

        def run(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
            rows = conn.execute(
                "SELECT device_id, kind, COUNT(*) AS n FROM audit WHERE at >= ? AND event = ? GROUP BY device_id, kind",
                (since, str(AuditEvent.ACCEPT)),
            ).fetchall()
            return {(row["device_id"], row["kind"]): row["n"] for row in rows}

        return await self._call(run, writes=False)

    # -- execution --------------------------------------------------------------------------------

    async def recover(self, now: float) -> int:
        """Rows left running by a crash go back to the queue (code `resumed`); returns how many."""

        def run(conn: sqlite3.Connection) -> int:
            rows = conn.execute("SELECT * FROM intents WHERE state = 'running'").fetchall()
            detail = "the bridge stopped while it ran; running it again"
            for row in rows:
                conn.execute(
                    "UPDATE intents SET state = 'queued', code = 'resumed', detail = ?, next_run = ?, updated = ?"
                    " WHERE seq = ?",
                    (detail, now, now, row["seq"]),
                )
                _audit_row(conn, now, _who(_entry(row)), AuditEvent.RETRY, code="resumed", detail=detail)
            return len(rows)

        count: int = await self._call(run)
        if count:
            logger.warning("recovered %d intents that were running when the bridge stopped", count)
        return count

    async def claim(self, kinds: Collection[str], limit: int, now: float) -> list[LedgerEntry]:
        """Move up to `limit` due queued rows of `kinds` to running, highest priority then oldest first."""
        kind_list = list(dict.fromkeys(kinds))
        if not kind_list or limit < 1:
            return []

        def run(conn: sqlite3.Connection) -> list[LedgerEntry]:
            rows = conn.execute(
                f"SELECT * FROM intents WHERE state = 'queued' AND kind IN ({_marks(kind_list)}) AND next_run <= ?"
                " ORDER BY priority DESC, seq LIMIT ?",
                (*kind_list, now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE intents SET state = 'running', tries = tries + 1, updated = ? WHERE seq = ?",
                [(now, row["seq"]) for row in rows],
            )
            return [replace(_entry(row), state=EntryState.RUNNING, tries=row["tries"] + 1, updated=now) for row in rows]

        return await self._call(run)

    async def next_due(self, kinds: Collection[str]) -> float | None:
        """When the earliest queued row of `kinds` becomes due, or None when none is queued."""
        kind_list = list(dict.fromkeys(kinds))
        if not kind_list:
            return None

        def run(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                f"SELECT MIN(next_run) AS due FROM intents WHERE state = 'queued' AND kind IN ({_marks(kind_list)})",
                kind_list,
            ).fetchone()
            due: float | None = row["due"]
            return due

        return await self._call(run, writes=False)

    async def finish(
        self, entry: LedgerEntry, state: EntryState, code: str, detail: str, now: float, integration: str
    ) -> Ack:
        """Record the final state of a running row; a row no longer running is left alone (logged)."""
        if not state.final:
            raise ValueError(f"finish needs a final state, not {state}")
        detail = clip_detail(detail)

        def run(conn: sqlite3.Connection) -> Ack:
            cursor = conn.execute(
                "UPDATE intents SET state = ?, code = ?, detail = ?, updated = ?"
                " WHERE device_id = ? AND intent_id = ? AND state = 'running' AND attempt = ?",
                (str(state), code, detail, now, entry.device_id, entry.intent_id, entry.attempt),
            )
            if cursor.rowcount == 0:
                logger.warning("finish of %s/%s ignored: not running", entry.device_id, entry.intent_id)
                row = conn.execute(
                    "SELECT * FROM intents WHERE device_id = ? AND intent_id = ?", (entry.device_id, entry.intent_id)
                ).fetchone()
                return _row_ack(row) if row is not None else entry.ack()
            _audit_row(conn, now, _who(entry), AUDIT_EVENTS[state], integration=integration, code=code, detail=detail)
            return Ack(entry.intent_id, AckState(str(state)), code, detail, int(now * 1000), entry.app)

        return await self._call(run)

    async def reschedule(self, entry: LedgerEntry, next_run: float, code: str, detail: str, now: float) -> None:
        """Put a running row back in the queue, due at `next_run`, and audit the retry."""
        detail = clip_detail(detail)

        def run(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE intents SET state = 'queued', code = ?, detail = ?, next_run = ?, updated = ?"
                " WHERE device_id = ? AND intent_id = ? AND state = 'running' AND attempt = ?",
                (code, detail, next_run, now, entry.device_id, entry.intent_id, entry.attempt),
            )
            if cursor.rowcount == 0:
                logger.warning("reschedule of %s/%s ignored: not running", entry.device_id, entry.intent_id)
                return
            _audit_row(conn, now, _who(entry), AuditEvent.RETRY, code=code, detail=detail)

        await self._call(run)

    # -- operations -------------------------------------------------------------------------------

    async def audit(
        self, device_id: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[AuditRecord]:
        """Audit records, oldest first, of one device or all, from `since` on, at most `limit`."""
        query = AuditQuery(device_id, since, limit)
        where, params = ["1 = 1"], list[str | float]()
        if query.device_id is not None:
            where.append("device_id = ?")
            params.append(query.device_id)
        if query.since is not None:
            where.append("at >= ?")
            params.append(query.since)

        def run(conn: sqlite3.Connection) -> list[AuditRecord]:
            rows = conn.execute(
                f"SELECT * FROM audit WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?", (*params, query.limit)
            ).fetchall()
            return [_audit_record(row) for row in rows]

        return await self._call(run, writes=False)

    async def purge(self, older_than: float) -> int:
        """Delete final rows the edge confirmed whose last change is before `older_than`."""

        def run(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                f"DELETE FROM intents WHERE confirmed = 1 AND state NOT IN {_LIVE} AND updated < ?", (older_than,)
            )
            return cursor.rowcount

        return await self._call(run)


def _convert(exc: BaseException) -> BaseException:
    """sqlite3 errors become TransientError (the caller may retry); others pass through unchanged."""
    if isinstance(exc, sqlite3.Error):
        converted = TransientError(f"ledger error: {exc}", code="ledger_error")
        converted.__cause__ = exc
        return converted
    return exc
