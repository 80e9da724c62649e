"""SqliteLedger: the ledger on one SQLite file (WAL, synchronous=FULL) with group commit.

One dedicated thread owns the connection. Calls queue an operation and await its future; the thread
takes every operation waiting at that moment, runs them in ONE transaction (each inside a savepoint, so
one failing call does not undo the others), commits once (one fsync), then resolves the futures. While
a commit is on disk, new calls pile up and share the next one: that is what lets thousands of intents
per second be admitted durably on one disk. Only reads and writes run on that thread: policy is
decided before (`ledger_plan.requests_for`), and admission writes the shared pure plan
(`ledger_sqlite_admit`); the executor's claims and finishes are `ledger_sqlite_jobs`. The schema and its
migrations are in `ledger_sqlite_schema`.

One process owns the file (the single-node store), so `recover` treats every running row as orphaned
by a crash. Every UPDATE of a state sets an event's target and matches only its source states
(`ledger_states`).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TypeVar

from cloud_bridge.audit import AuditEvent, AuditQuery, AuditRecord
from cloud_bridge.errors import BridgeError, TransientError
from cloud_bridge.ledger import (
    DEFAULT_LEASE,
    DEPTH_SQL,
    WAITING_SQL,
    ClaimOffer,
    DeviceLike,
    LedgerDepth,
    LedgerEntry,
    audit_params,
    clip_detail,
    depth_from_rows,
    entry_from_row,
    held_by,
    lapsed_detail,
    log_context,
)
from cloud_bridge.ledger_finish import Finish, JoinedFinishes, final_state
from cloud_bridge.ledger_plan import Request
from cloud_bridge.ledger_sqlite_admit import KNOWN, admit, admit_plan, known_of
from cloud_bridge.ledger_sqlite_jobs import HELD, claim_rows, due_sql, finish_rows, lapsed_sql, unclaim_rows
from cloud_bridge.ledger_sqlite_schema import AUDIT_INSERT, AUDIT_ROWS, migrate
from cloud_bridge.ledger_states import (
    LIVE_STATES,
    EntryState,
    LedgerEvent,
    sources,
    sql_states,
    state_in,
    target,
)
from cloud_bridge.own_threads import own_thread
from cloud_bridge.sqlite_calls import sqlite_transaction
from cloud_bridge.usage import UsageQuery, UsageRow, merged, row_from_sums, tally
from cloud_bridge.usage_sql import UPSERT as USAGE_UPSERT
from cloud_bridge.usage_sql import select as usage_select
from cloud_bridge.usage_sql import upsert_rows
from intent_contract.codec import Ack
from intent_contract.sql_text import in_chunks, marks
from intent_contract.sqlite_wal import use_wal
from intent_contract.sqlite_writer import GroupCommitWriter, WriterHooks
from intent_contract.wire import MAX_ATTEMPT

logger = logging.getLogger(__name__)

_MAX_BATCH = 1000  # operations per transaction; bounds how long one commit holds callers
_LIVE = sql_states(LIVE_STATES)
# Sent to a device each time it subscribes, on the writer: each on its partial index (a plan test holds
# them there), or every row the device ever sent is read.
UNCONFIRMED_SQL = f"{KNOWN} WHERE device_id = ? AND confirmed = 0 AND state NOT IN {_LIVE} ORDER BY seq"
ANNOUNCED_SQL = f"{KNOWN} WHERE device_id = ? AND announce = 1 AND state IN {_LIVE}"

T = TypeVar("T")


def _audit_row(
    conn: sqlite3.Connection, at: float, entry: LedgerEntry, event: AuditEvent, integration: str, code: str, detail: str
) -> None:
    conn.execute(AUDIT_INSERT, audit_params(at, entry, event, integration, code, detail))


# The audit columns a record is made of, by name: `SELECT *` met a column a newer bridge's additive step added
# (a rolling upgrade, a rollback) as an unknown keyword, and `cloud-bridge audit` ended in a traceback.
_AUDIT_COLUMNS = "at, device_id, tenant, intent_id, kind, event, integration, code, detail"


def _audit_record(row: sqlite3.Row) -> AuditRecord:
    """A record from a row selected with _AUDIT_COLUMNS."""
    return AuditRecord(**{**dict(zip(row.keys(), row, strict=True)), "event": AuditEvent(row["event"])})


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
        self._finishes = JoinedFinishes(lambda take: self._call(lambda conn: finish_rows(conn, take())))
        self._reads = sqlite_transaction(self.path, "ledger")

    def __repr__(self) -> str:
        return f"SqliteLedger({str(self.path)!r})"

    @property
    def claims_at_admission(self) -> bool:
        return True

    @property
    def commits(self) -> int:
        """Write transactions so far (for tests and metrics)."""
        return self._writer.commits

    async def open(self) -> None:
        """Open (creating and migrating if needed) the database and start the writer thread."""
        if self._writer.running:
            raise RuntimeError("ledger already open")
        await self._writer.start()

    async def close(self) -> None:
        """Run what is queued, stop the thread and close the database."""
        await self._writer.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        use_wal(conn)
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA busy_timeout = 5000")
        migrate(conn, at_start=True)  # one process owns the file: always safe
        return conn

    async def _call(self, fn: Callable[[sqlite3.Connection], T], *, writes: bool = True) -> T:
        if not self._writer.running:
            raise RuntimeError("ledger is not open")
        return await self._writer.call(fn, writes=writes)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """An operator's read (usage, audit) on a connection of its own, beside the writer (WAL: neither waits
        for the other). On the writer's thread it held every admission and result behind it: the dashboard's
        usage page of 5,000 devices (600,000 rollup rows) stalled the node's ledger for 1.0-1.8 s."""
        if not self._writer.running:
            raise RuntimeError("ledger is not open")

        def run() -> T:
            with self._reads() as conn:
                return fn(conn)

        return await own_thread(run)

    # -- admission --------------------------------------------------------------------------------

    async def admit(self, device: DeviceLike, requests: Sequence[Request], now: float) -> list[Ack]:
        """Record a judged batch in one durable transaction; see `Ledger.admit`."""
        batch = list(requests)
        return await self._call(lambda c: admit(c, device, batch, now))

    async def admit_claiming(
        self, device: DeviceLike, requests: Sequence[Request], now: float, offer: ClaimOffer
    ) -> tuple[list[Ack], list[LedgerEntry]]:
        """`admit`, claiming the batch's new rows that `offer` has slots for in the same transaction."""
        batch = list(requests)

        def run(conn: sqlite3.Connection) -> tuple[list[Ack], list[LedgerEntry]]:
            plan = admit_plan(conn, device, batch, now)
            left = dict(offer.slots)
            rows = []
            queued = [w for w in plan.writes if w.state is EntryState.QUEUED]
            for write in sorted(queued, key=lambda w: -w.envelope.priority):  # stable: batch order within one
                if left.get(write.envelope.kind, 0) > 0:
                    left[write.envelope.kind] -= 1
                    query = "SELECT * FROM intents WHERE device_id = ? AND intent_id = ?"
                    rows.append(conn.execute(query, (device.device_id, write.envelope.id)).fetchone())
            return plan.acks, claim_rows(conn, rows, offer.owner, now + offer.lease, now)

        return await self._call(run)

    async def unconfirmed(self, device_id: str) -> list[Ack]:
        """Final results the edge has not confirmed yet, then live rows an operator retried (`accepted`)."""

        def run(conn: sqlite3.Connection) -> list[Ack]:
            rows = conn.execute(UNCONFIRMED_SQL, (device_id,)).fetchall()
            rows += conn.execute(ANNOUNCED_SQL, (device_id,))
            return [known_of(r).ack() for r in rows]

        return await self._call(run, writes=False)

    async def confirm(self, device_id: str, ids: Sequence[str], attempt: int | None = None) -> int:
        """Mark final results as applied by the edge; unknown, live or already confirmed ids are ignored, and
        with `attempt` rows of a later attempt."""
        unique = list(dict.fromkeys(ids))
        upto = MAX_ATTEMPT if attempt is None else attempt

        def run(conn: sqlite3.Connection) -> int:
            changed = 0
            for chunk, chunk_marks in in_chunks(unique):
                changed += conn.execute(
                    "UPDATE intents SET confirmed = 1, announce = 0 WHERE device_id = ?"
                    f" AND intent_id IN ({chunk_marks}) AND confirmed = 0 AND state NOT IN {_LIVE} AND attempt <= ?",
                    (device_id, *chunk, upto),
                ).rowcount
            return changed

        if not unique:
            return 0
        return await self._call(run)

    # -- execution --------------------------------------------------------------------------------

    async def recover(self, now: float) -> int:
        """Every running row goes back to the queue (code `resumed`): this process is the only executor."""
        detail = "the bridge stopped while it ran; running it again"

        def run(conn: sqlite3.Connection) -> int:
            event = LedgerEvent.RESUME
            rows = conn.execute(
                f"SELECT * FROM intents WHERE {state_in(sources(event))}",
            ).fetchall()
            for row in rows:
                conn.execute(
                    f"UPDATE intents SET state = '{target(event)}', code = 'resumed', detail = ?, next_run = ?,"
                    " updated = ?, owner = '', lease_until = 0 WHERE seq = ?",
                    (detail, now, now, row["seq"]),
                )
                _audit_row(conn, now, entry_from_row(row), AuditEvent.RETRY, "", "resumed", detail)
            return len(rows)

        count: int = await self._call(run)
        if count:
            logger.warning("recovered %d intents that were running when the bridge stopped", count)
        return count

    async def claim(
        self,
        kinds: Collection[str],
        limit: int,
        now: float,
        *,
        owner: str = "",
        lease: float = DEFAULT_LEASE,
        tenant: str | None = None,
        due_by: float | None = None,
    ) -> list[LedgerEntry]:
        """Rows whose lease ran out first, then due queued rows, highest priority then oldest first."""
        kind_list = list(dict.fromkeys(kinds))
        if not kind_list or limit < 1:
            return []
        until = now + lease
        due_at = now if due_by is None else due_by
        of_tenant, tenant_args = (False, ()) if tenant is None else (True, (tenant,))

        def run(conn: sqlite3.Connection) -> list[LedgerEntry]:
            n = len(kind_list)
            lapsed = conn.execute(lapsed_sql(n, of_tenant), (due_at, *kind_list, *tenant_args, limit)).fetchall()
            rest = limit - len(lapsed)
            due = conn.execute(due_sql(n, of_tenant), (*kind_list, *tenant_args, due_at, rest)).fetchall()
            claimed = claim_rows(conn, [*lapsed, *due], owner, until, now)
            for row in lapsed:
                detail = lapsed_detail(row["owner"])
                _audit_row(conn, now, entry_from_row(row), AuditEvent.RETRY, "", "lease_expired", detail)
            return claimed

        return await self._call(run)

    async def renew(self, entries: Sequence[LedgerEntry], until: float) -> int:
        """Extend the leases of the rows these claims still hold."""
        params = [(until, e.device_id, e.intent_id, e.attempt, e.tries) for e in entries]

        def run(conn: sqlite3.Connection) -> int:
            cursor = conn.executemany(
                f"UPDATE intents SET lease_until = ? WHERE {HELD} AND state = '{EntryState.RUNNING}'", params
            )
            return cursor.rowcount

        return await self._call(run) if params else 0

    async def unclaim(self, entries: Sequence[LedgerEntry]) -> int:
        """Put rows claimed and never started back in the queue, as before their claim."""
        return await self._call(lambda conn: unclaim_rows(conn, entries)) if entries else 0

    async def waiting_tenants(self, kinds: Collection[str], now: float) -> list[str]:
        """Tenants with rows of `kinds` queued or running past their lease, sorted (a skip scan per kind)."""
        query = WAITING_SQL.format(p="?")

        def run(conn: sqlite3.Connection) -> list[str]:
            found = {row[0] for kind in dict.fromkeys(kinds) for row in conn.execute(query, (kind, kind, now, kind))}
            return sorted(found)

        return await self._call(run, writes=False)

    async def next_due(self, kinds: Collection[str]) -> float | None:
        """When the earliest queued row of `kinds` becomes due, or None when none is queued."""
        kind_list = list(dict.fromkeys(kinds))
        if not kind_list:
            return None

        def run(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                f"SELECT MIN(next_run) AS due FROM intents WHERE {state_in(sources(LedgerEvent.CLAIM))}"
                f" AND kind IN ({marks(kind_list)})",
                kind_list,
            ).fetchone()
            due: float | None = row["due"]
            return due

        return await self._call(run, writes=False)

    async def finish(
        self,
        entry: LedgerEntry,
        state: EntryState,
        code: str,
        detail: str,
        now: float,
        integration: str,
        *,
        seconds: float | None = None,
    ) -> Ack:
        """Record the final state of the row `entry` holds, and count it in usage (with the provider's
        `seconds`); a row no longer held is left alone (logged)."""
        finish = Finish(entry, final_state(state), code, clip_detail(detail), now, integration, seconds)
        return await self._finishes.finish(finish)

    async def reschedule(
        self, entry: LedgerEntry, next_run: float, code: str, detail: str, now: float, *, counted: bool = True
    ) -> None:
        """Put the row `entry` holds back in the queue, due at `next_run` (`Ledger.reschedule`); audit the retry."""
        detail = clip_detail(detail)
        event = LedgerEvent.RETRY

        def run(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                f"UPDATE intents SET state = '{target(event)}', tries = tries - {int(not counted)}, code = ?,"
                f" detail = ?, next_run = ?, updated = ?, owner = '', lease_until = 0"
                f" WHERE {HELD} AND {state_in(sources(event))}{'' if counted else ' AND next_run = ?'}",
                (code, detail, next_run, now, *held_by(entry), *(() if counted else (entry.next_run,))),
            )
            if cursor.rowcount == 0:
                logger.warning("reschedule of %s/%s ignored: no longer held", entry.device_id, entry.intent_id,
                               extra=log_context(entry, code="not_held"))  # fmt: skip
                return
            _audit_row(conn, now, entry, AuditEvent.RETRY, "", code, detail)

        await self._call(run)

    # -- operations -------------------------------------------------------------------------------

    async def note(self, records: Sequence[AuditRecord]) -> None:
        """Append audit records of refusals no ledger row stands for (and count their intents in usage)."""
        rows = list(records)
        tallies = merged(tally(r.tenant, r.device_id, r.kind, r.event, r.at) for r in rows if r.intent_id and r.kind)

        def run(conn: sqlite3.Connection) -> None:
            AUDIT_ROWS.run(
                conn,
                [(r.at, r.device_id, r.tenant, r.intent_id, r.kind, str(r.event), r.integration, r.code, r.detail)
                 for r in rows],
            )  # fmt: skip
            conn.executemany(USAGE_UPSERT, upsert_rows(tallies, ""))

        if rows:
            await self._call(run)

    async def usage(self, query: UsageQuery) -> list[UsageRow]:
        """Usage summed per the query's grouping (one read of the rollup table)."""
        text, params = usage_select(query)

        def run(conn: sqlite3.Connection) -> list[UsageRow]:
            return [row_from_sums(dict(zip(r.keys(), r, strict=True))) for r in conn.execute(text, params)]

        return await self._read(run)

    async def audit(
        self, device_id: str | None = None, since: float | None = None, limit: int = 1000, *, tenant: str | None = None
    ) -> list[AuditRecord]:
        """Audit records, oldest first, of one device (or tenant) or all, from `since` on, at most `limit`."""
        query = AuditQuery(device_id, since, limit, tenant)
        where, params = ["1 = 1"], list[str | float]()
        if query.device_id is not None:
            where.append("device_id = ?")
            params.append(query.device_id)
        if query.tenant is not None:
            where.append("tenant = ?")
            params.append(query.tenant)
        if query.since is not None:
            where.append("at >= ?")
            params.append(query.since)

        def run(conn: sqlite3.Connection) -> list[AuditRecord]:
            rows = conn.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
                (*params, query.limit),
            ).fetchall()
            return [_audit_record(row) for row in rows]

        return await self._read(run)

    async def depth(self) -> LedgerDepth:
        """Rows not done with, per state and kind, and the oldest queued (one read).

        On a connection of its own, in a worker thread: it reads every row not done with (290 ms with
        1,000,000 queued), and on the writer's thread every commit waited for it at each metrics scrape
        (bench/findings.md F36). WAL lets it read while the writer writes."""
        if not self._writer.running:
            raise RuntimeError("ledger is not open")

        def run() -> LedgerDepth:
            with contextlib.closing(sqlite3.connect(self.path, isolation_level=None, timeout=5)) as conn:
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA query_only = ON")
                return depth_from_rows(conn.execute(DEPTH_SQL.format(unconfirmed="confirmed = 0")).fetchall())

        try:
            return await own_thread(run)
        except sqlite3.Error as exc:
            raise _convert(exc) from exc

    async def ping(self) -> None:
        """One read through the writer thread: it answers only when the database does."""
        await self._call(lambda conn: conn.execute("PRAGMA user_version").fetchone(), writes=False)


def _convert(exc: BaseException) -> BaseException:
    """sqlite3 errors become TransientError (the caller may retry); others pass through unchanged."""
    if isinstance(exc, sqlite3.Error):
        converted = TransientError(f"ledger error: {exc}", code="ledger_error")
        converted.__cause__ = exc
        return converted
    return exc
