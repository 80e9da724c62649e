"""Operators' intent operations on the ledger's tables, for either backend (SQLite and PostgreSQL).

`SqlIntents` lists and finds ledger rows, retries and cancels them and purges history, on a
transaction factory of either driver (as `fleet_sql.SqlFleet` does): any process with the store's
settings (the CLI, the dashboard inside a node) may call it while nodes run.

Retry and cancel are ledger events (`ledger_states.LedgerEvent.REQUEUE`, `CANCEL`): the UPDATE sets the
event's target and matches only its source states, so nothing the table forbids can happen. Each is
audited in the same transaction, with the operator's name, and signals the nodes (`signal`): the node
holding the device sends it the row's status (a retried row is marked `announce`: it is sent as
`accepted` until it is final, also on the device's next connect), and executors wake up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cloud_bridge.audit import AuditEvent, AuditRecord
from cloud_bridge.cancel_sql import ask_cancel
from cloud_bridge.errors import RevokedDeviceError, TransientError, UnknownIntentError
from cloud_bridge.fleet_schema import SQLITE_NOW
from cloud_bridge.ledger import PURGE_BATCH, LedgerEntry, clip_detail, entry_from_row
from cloud_bridge.ledger_states import (
    AUDIT,
    LIVE_STATES,
    OPERATOR_EVENTS,
    EntryState,
    LedgerEvent,
    sources,
    sql_states,
    state_in,
    step,
    target,
)
from cloud_bridge.outcome import UNANSWERED
from cloud_bridge.sqlite_calls import Transaction
from cloud_bridge.usage import tally
from cloud_bridge.usage_sql import UPSERT as USAGE_UPSERT
from cloud_bridge.usage_sql import upsert_rows
from intent_contract.wire import MAX_DETAIL

_LIVE = sql_states(LIVE_STATES)
USAGE_WRITER = "operator"  # the usage rows operators' cancels add to (PostgreSQL: no node's row is waited for)
CANCELLED = "cancelled"  # the code of a row an operator cancelled
REQUEUED = "requeued"  # the code of a row an operator retried, until it runs
# An operation's UPDATE is tried again when the row moved, between it and the SELECT after it, into a state
# the operation may start from; a row that keeps moving is answered "try again".
OPERATE_TRIES = 3
DUE_AT_ONCE = 0.0  # a retried row's next_run: due on every node, whatever its clock and the operator's

SQLITE_SCHEMA_SUMMARY = "operator retry and cancel: statuses to announce, signals between processes"
SQLITE_SCHEMA: tuple[str, ...] = (
    "ALTER TABLE intents ADD COLUMN announce INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX intents_announce ON intents (device_id) WHERE announce = 1",
    # SQLite has no NOTIFY: a process that changes a row for the nodes adds a line, the node polls it.
    "CREATE TABLE signals (seq INTEGER PRIMARY KEY, device_id TEXT NOT NULL, at REAL NOT NULL)",
)
PG_SCHEMA_SUMMARY = "operator retry and cancel: statuses to announce"
PG_SCHEMA: tuple[str, ...] = (
    "ALTER TABLE intents ADD COLUMN announce boolean NOT NULL DEFAULT false",
    "CREATE INDEX intents_announce ON intents (device_id) WHERE announce",
)

# Signal the nodes, in the operation's transaction: (connection, device id).
Signal = Callable[[Any, str], None]


@dataclass(frozen=True, slots=True)
class IntentQuery:
    """A validated filter for `SqlIntents.rows`: newest first, at most `limit` rows."""

    device_id: str | None = None
    tenant: str | None = None
    state: EntryState | None = None
    kind: str | None = None
    limit: int = 100

    MAX_LIMIT = 10_000

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= self.MAX_LIMIT:
            raise ValueError(f"limit must be within 1..{self.MAX_LIMIT}")


@dataclass(frozen=True, slots=True)
class Purged:
    """What a purge deleted."""

    intents: int
    audit: int


def listing_sql(where: Sequence[str]) -> str:
    """The operators' listing: the newest changed rows matching `where` (one `?` more: the limit).

    The sort picks keys only, then the rows are read by key. Sorting whole rows (payloads included) for the
    newest 200 of a million took 1.3-1.4 s on SQLite and 0.58 s on PostgreSQL; sorting their keys, 0.4 s and
    0.26 s. No index on `updated`: every state change would write it, and without statistics SQLite walked
    it for a filter that matches nothing (5.6 s against a 0.26 s scan)."""
    order = "ORDER BY updated DESC, seq DESC"
    matching = " AND ".join(where) or "1 = 1"
    return f"SELECT * FROM intents WHERE seq IN (SELECT seq FROM intents WHERE {matching} {order} LIMIT ?) {order}"


def operator_detail(event: LedgerEvent, operator: str) -> str:
    """The row's and the audit's detail for an operator's event: who did it."""
    done = "retried" if event is LedgerEvent.REQUEUE else "cancelled"
    return clip_detail(f"{done} by operator {operator}")


# A cancelled row's detail, from the row before it: after a try of this attempt, how the last one ended, and
# when it ended without the provider's answer (a timeout), that it may have reached the provider: the device
# and the operator are not told only "cancelled" of an email that may have gone. In the UPDATE, where the
# row's code is the one it had before, so a row that moves meanwhile (PostgreSQL) is described as it was.
def cancel_detail_sql(tries: str = "tries") -> str:
    """The SQL of that detail, `tries` being the row's tries of this attempt (a row claimed ahead: `tries - 1`,
    its claim's try never started)."""
    return (
        f"CASE WHEN {tries} = 0 THEN ? ELSE substr(? || code"
        f" || CASE WHEN code IN ({', '.join('?' * len(UNANSWERED))}) THEN ? ELSE '' END, 1, {MAX_DETAIL}) END"
    )


def cancel_detail(detail: str) -> tuple[str, ...]:
    """The parameters of `cancel_detail_sql` for an operator's `detail`."""
    return (detail, f"{detail}; its last try ended ", *sorted(UNANSWERED), ": it may have reached the provider")


@dataclass(frozen=True, slots=True)
class PurgePace:
    """How a purge shares a SQLite ledger with its node's writer: `batch` rows per transaction, then a pause
    as long as the transaction took and at least `pause` seconds (`sleep` is injected for tests).

    A purge from another connection takes SQLite's one write lock, and the node's writer waits for it in
    SQLite's busy handler, which sleeps 1, 2, 5 ... up to 100 ms between looks. Back to back, a purge took
    the lock again before the waiting writer looked: admitting a batch took up to 730 ms while 1,000,000 rows
    were purged (p99 731 ms, 33 batches in 2.2 s where 220 were due; BENCHMARKS.md F49). Small transactions
    with a pause longer than the busy handler's first sleeps let the writer in at its next look (p99 7-20 ms).
    """

    batch: int = 1000
    pause: float = 0.025
    sleep: Callable[[float], None] = time.sleep

    def after(self, took: float) -> None:
        self.sleep(max(self.pause, took))


class SqlIntents:
    """Operators' intent operations on a SQL connection of either backend (`marker`: `?` or `%s`;
    `true`/`false`: the backend's boolean literals; `now_sql`: its clock, as seconds since the epoch)."""

    def __init__(
        self,
        transaction: Transaction,
        *,
        signal: Signal,
        ask: Signal | None = None,
        marker: str = "?",
        true: str = "1",
        false: str = "0",
        on_open: Callable[[], None] = lambda: None,
        purge_pace: PurgePace | None = None,
        revoked: Callable[[str], bool],
        now_sql: str = SQLITE_NOW,
    ) -> None:
        self._transaction = transaction
        self._now_sql = now_sql
        self.revoked = revoked  # whether a device is revoked (the registry's word)
        self.purge_pace = purge_pace  # None: no pause (PostgreSQL has no one write lock)
        self._signal = signal
        self.ask_signal = ask or signal  # tells the nodes of a cancel asked of a running row (cloud_bridge.cancel_sql)
        self._marker = marker
        self._true = true
        self._false = false
        self._on_open = on_open

    def open(self) -> None:
        self._on_open()

    def store_now(self) -> float:
        """The store's time. An operator's command runs on any machine: what it records (a row's `updated`, the
        audit's time, the usage day) and the bounds a purge deletes by are the nodes' time, not that machine's
        (one a few days ahead purged rows the bridge would still admit again, so a late copy ran twice)."""
        with self._transaction() as conn:
            return float(self.run(conn, f"SELECT {self._now_sql} AS now").fetchone()["now"])

    def run(self, conn: Any, text: str, params: Sequence[Any] = ()) -> Any:
        """`text` (with `?` markers) on `conn`, a connection of `transaction()`."""
        return conn.execute(text if self._marker == "?" else text.replace("?", self._marker), params)

    @property
    def false(self) -> str:
        """The backend's false literal."""
        return self._false

    def transaction(self) -> Any:
        """A transaction of the store's driver, as a context manager yielding its connection."""
        return self._transaction()

    def rows(self, query: IntentQuery) -> list[LedgerEntry]:
        """Rows matching `query`, the most recently changed first."""
        where, params = ["1 = 1"], list[Any]()
        for column, value in (
            ("device_id", query.device_id),
            ("tenant", query.tenant),
            ("state", None if query.state is None else str(query.state)),
            ("kind", query.kind),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        with self._transaction() as conn:
            rows = self.run(conn, listing_sql(where), (*params, query.limit)).fetchall()
        return [entry_from_row(row) for row in rows]

    def find(self, intent_id: str, device_id: str | None = None) -> list[LedgerEntry]:
        """The row (device_id, intent_id), or every row with that intent id (of any device, at most 10)."""
        with self._transaction() as conn:
            if device_id is None:
                rows = self.run(conn, "SELECT * FROM intents WHERE intent_id = ? ORDER BY seq LIMIT 10", (intent_id,))
            else:
                rows = self.run(
                    conn, "SELECT * FROM intents WHERE device_id = ? AND intent_id = ?", (device_id, intent_id)
                )
            return [entry_from_row(row) for row in rows.fetchall()]

    def audit_counts(self, since: float) -> dict[str, int]:
        """How many audit records of each event from `since` on: counted by the store (through `audit_at`), so
        the counts are the window's however many there are (`cloud-bridge status` read at most 100,000 records
        into memory and counted those)."""
        with self._transaction() as conn:
            rows = self.run(
                conn, "SELECT event, count(*) AS n FROM audit WHERE at >= ? GROUP BY event ORDER BY event", (since,)
            ).fetchall()
        return {str(row["event"]): int(row["n"]) for row in rows}

    def history(self, device_id: str, intent_id: str, limit: int = 100) -> list[AuditRecord]:
        """The row's audit records, oldest first (the last `limit`)."""
        with self._transaction() as conn:
            rows = self.run(
                conn,
                "SELECT at, device_id, tenant, intent_id, kind, event, integration, code, detail FROM audit"
                " WHERE device_id = ? AND intent_id = ? ORDER BY seq DESC LIMIT ?",
                (device_id, intent_id, limit),
            ).fetchall()
        return [AuditRecord(**{**dict(row), "event": AuditEvent(row["event"])}) for row in reversed(rows)]

    def operate(self, device_id: str, intent_id: str, event: LedgerEvent, operator: str, now: float) -> LedgerEntry:
        """Apply an operator's event to one row; returns the row after it.

        UnknownIntentError when there is no such row; LedgerStateError (nothing changed) when the row's
        state does not allow the event. A cancel of a running row records an ask of the node holding it and
        returns the row still running (cloud_bridge.cancel_sql; `operator_api.cancel` waits for the answer).
        """
        if event not in OPERATOR_EVENTS:
            raise ValueError(f"{event} is not an operator's event")
        if event is LedgerEvent.REQUEUE and self.revoked(device_id):
            # Queued again, the row was claimed and failed `device_revoked` at once: the retry answered "now
            # queued" and ran nothing. (A revocation committed after this look ends the row so too, unrun.)
            raise RevokedDeviceError(
                f"cannot requeue intent {intent_id}: device {device_id} is revoked, its intents never run again"
            )
        detail = operator_detail(event, operator)
        if event is LedgerEvent.REQUEUE:
            # A new attempt (a new provider idempotency key: device:intent:attempt), due at once, without the
            # deadline it may have passed, as the edge's own `retry` does. Due at once by every node's clock:
            # `now` is the operator's machine's (the CLI runs anywhere), and a retry made on a clock an hour
            # ahead of the nodes' waited an hour in the queue.
            changes = (
                "attempt = attempt + 1, tries = 0, next_run = ?, expires = NULL, code = ?, detail = ?,"
                f" announce = {self._true}"
            )
            values: tuple[Any, ...] = (DUE_AT_ONCE, REQUEUED, detail)
            code = REQUEUED
        else:
            changes, values, code = (
                f"code = ?, detail = {cancel_detail_sql()}",
                (CANCELLED, *cancel_detail(detail)),
                CANCELLED,
            )
        update = (
            f"UPDATE intents SET state = '{target(event)}', {changes}, updated = ?, owner = '', lease_until = 0,"
            f" confirmed = {self._false} WHERE device_id = ? AND intent_id = ? AND {state_in(sources(event))}"
        )
        with self._transaction() as conn:
            for _ in range(OPERATE_TRIES):
                changed = self.run(conn, update, (*values, now, device_id, intent_id)).rowcount
                row = self.run(
                    conn, "SELECT * FROM intents WHERE device_id = ? AND intent_id = ?", (device_id, intent_id)
                ).fetchone()
                if row is None:
                    raise UnknownIntentError(f"no intent {intent_id} of device {device_id} in the ledger")
                entry = entry_from_row(row)
                if changed:
                    break
                # The UPDATE matched nothing: the row's state forbids the move (step raises LedgerStateError,
                # naming it), or the row moved into a state that allows it after the UPDATE looked and before
                # the SELECT (PostgreSQL, READ COMMITTED: each statement sees what committed before it, such
                # as an executor putting a running row back in the queue or failing it): try again.
                if event is LedgerEvent.CANCEL and entry.state is EntryState.RUNNING:
                    # Claimed, maybe ahead of its call: its node decides (cloud_bridge.cancel_asks).
                    if asked := ask_cancel(self, conn, entry, operator):
                        return asked
                    continue
                step(entry.state, event)
            else:
                raise TransientError(
                    f"intent {intent_id} of device {device_id} changed {OPERATE_TRIES} times during the operation;"
                    " try again",
                    code="intent_busy",
                )
            self.record(conn, entry, event, code, now)
        return entry

    def record(self, conn: Any, entry: LedgerEntry, event: LedgerEvent, code: str, now: float) -> None:
        """Audit an operator's event on `entry` (the row after it), count an end in usage, signal the nodes."""
        audit = AUDIT[event]
        assert audit is not None
        self.run(
            conn,
            "INSERT INTO audit (at, device_id, tenant, intent_id, kind, event, integration, code, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (now, entry.device_id, entry.tenant, entry.intent_id, entry.kind, str(audit), "", code, entry.detail),
        )
        # A cancel ends the intent: counted in usage with its audit row, as every other end is (it was not).
        ended = tally(entry.tenant, entry.device_id, entry.kind, audit, now)
        if ended is not None:
            [row] = upsert_rows([ended], USAGE_WRITER)
            self.run(conn, USAGE_UPSERT, row)
        self._signal(conn, entry.device_id)

    def purge(
        self,
        intents_before: float | None,
        audit_before: float | None,
        created_before: float,
        *,
        batch: int | None = None,
        stop: threading.Event | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Purged:
        """Delete final rows the edge confirmed, last changed before `intents_before` and created (ms) before
        `created_before`, and audit rows from before `audit_before` (None: keep). Live rows, results an edge
        has not confirmed, and rows whose intent the bridge would still admit again, stay.

        In transactions of at most `batch` rows (default: the pace's, else PURGE_BATCH), so a long-due purge
        never holds the ledger's writer (SQLite has one) for long, paused between them as `purge_pace` says.
        Once `stop` is set it ends after the transaction under way (what it deleted is counted): a paced
        purge takes about 30 s per 1,000,000 rows, and a node stopping must not wait for it. `progress` hears
        the rows deleted so far (intents and audit) after each transaction."""
        batch = batch or (self.purge_pace.batch if self.purge_pace is not None else PURGE_BATCH)
        stop = stop or threading.Event()
        deleted = {"intents": 0, "audit": 0}
        for table, where, params in self._purge_where(intents_before, audit_before, created_before):
            # The conditions twice: PostgreSQL (READ COMMITTED) re-checks a row it had to wait for against the
            # outer WHERE only, not against the subquery's; without them in the outer WHERE, a row an
            # operator retried meanwhile (queued again, unconfirmed) was deleted once the retry committed.
            text = f"DELETE FROM {table} WHERE {where} AND seq IN (SELECT seq FROM {table} WHERE {where} LIMIT ?)"
            while not stop.is_set():
                began = time.monotonic()
                with self._transaction() as conn:
                    done = max(0, int(self.run(conn, text, (*params, *params, batch)).rowcount))
                deleted[table] += done
                if progress is not None:
                    progress(sum(deleted.values()))
                if done < batch:
                    break
                if self.purge_pace is not None:
                    self.purge_pace.after(time.monotonic() - began)
        return Purged(deleted["intents"], deleted["audit"])

    def purgeable(self, intents_before: float | None, audit_before: float | None, created_before: float) -> int:
        """How many rows (intents and audit) a purge with these bounds would delete now: its progress's total."""
        with self._transaction() as conn:
            return sum(
                int(self.run(conn, f"SELECT count(*) AS n FROM {table} WHERE {where}", params).fetchone()["n"])
                for table, where, params in self._purge_where(intents_before, audit_before, created_before)
            )

    def _purge_where(
        self, intents_before: float | None, audit_before: float | None, created_before: float
    ) -> list[tuple[str, str, tuple[float, ...]]]:
        """(table, condition, its parameters) of what a purge deletes; the intents first, then the audit
        (whose rows never change, so nothing can make one young again)."""
        tables: list[tuple[str, str, tuple[float, ...]]] = []
        if intents_before is not None:
            done = f"confirmed = {self._true} AND state NOT IN {_LIVE} AND updated < ? AND created < ?"
            tables.append(("intents", done, (intents_before, created_before)))
        if audit_before is not None:
            tables.append(("audit", "at < ?", (audit_before,)))
        return tables
