"""Intake, and every operator action on intents, as plain functions on a sqlite3 connection.

The running outbox calls the writing ones inside its group commit (edge_outbox.store); the ops CLI
calls the same functions inside its own transaction. Either way, triggers keep stats and events exact.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, cast

from edge_outbox.db import COLUMNS, SELECT_ROW, IntentRow, pending_totals
from edge_outbox.errors import NotFoundError
from edge_outbox.intake_rules import Admitted, Refused, same_intent
from edge_outbox.states import (
    PENDING,
    Effect,
    Event,
    State,
    sources,
    sql_set,
    state_in,
    step,
    target,
)
from intent_contract.sql_text import in_chunks
from intent_contract.sqlite_rows import ManyRows
from intent_contract.wire import MAX_DETAIL


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Bounds on what may wait in the queue; 0 means no bound."""

    max_items: int = 0
    max_bytes: int = 0


class Outcome(StrEnum):
    STORED = "stored"  # a new row (accepted, expired on arrival, or rejected)
    DUPLICATE = "duplicate"  # the app sent an id it had sent before: nothing new stored
    QUEUE_FULL = "queue_full"  # refused by the queue limits: nothing stored


class IntakeResult(NamedTuple):
    """What one intake decision became. A NamedTuple, as `IntentRow`: one is built for every intent taken in."""

    outcome: Outcome
    row: IntentRow | None  # the stored or existing row; None when the queue was full
    detail: str = ""


def _row(conn: sqlite3.Connection, where: str, *args: object) -> IntentRow | None:
    found = conn.execute(f"{SELECT_ROW} WHERE {where} LIMIT 1", args).fetchone()
    return IntentRow.from_db(found) if found else None


_INTENTS = ManyRows.into("intents", COLUMNS[1:])
# `_Staged.add` builds rows in this order (a new column must be added there too).
assert COLUMNS[1:] == ("id", "app", "kind", "state", "code", "detail", "priority", "created", "expires", "updated",
                       "attempt", "sent", "sent_at", "confirmed", "payload", "size")  # fmt: skip


class _Staged:
    """New rows of one intake batch, inserted together (`ManyRows`) when `flush` is called.

    Each staged row holds a place in the batch's results until then; the rows are built without reading
    them back (reading back was 40% of the intake in a profile; building them from dicts, a third of the rest).
    """

    def __init__(self, results: list[IntakeResult | None]) -> None:
        self._results = results
        self._rows: list[tuple[object, ...]] = []
        self._places: list[int] = []

    def add(
        self,
        item: Admitted | Refused,
        now: int,
        state: State,
        size: int,
        code: str = "",
        detail: str = "",
        priority: int = 0,
        expires: int | None = None,
    ) -> int:
        """Stage a new intent; its place in the results."""
        self._rows.append((item.id, item.app, item.kind, state, code, detail, priority, item.created, expires, now,
                           1, 0, 0, 0, item.payload, size))  # fmt: skip
        self._places.append(len(self._results))
        self._results.append(None)
        return self._places[-1]

    def flush(self, conn: sqlite3.Connection) -> None:
        for place, seq, values in zip(self._places, _INTENTS.insert(conn, self._rows), self._rows, strict=True):
            self._results[place] = IntakeResult(Outcome.STORED, IntentRow(seq, *values))  # type: ignore[arg-type]
        self._rows.clear()
        self._places.clear()


def commit_intake(conn: sqlite3.Connection, item: Admitted | Refused, limits: QueueLimits, now: int) -> IntakeResult:
    """Store one intake decision (see `commit_intakes`)."""
    return commit_intakes(conn, [item], limits, now)[0]


def commit_intakes(
    conn: sqlite3.Connection, items: list[Admitted | Refused], limits: QueueLimits, now: int
) -> list[IntakeResult]:
    """Store intake decisions in order, deduplicating repeated ids and enforcing the queue limits.

    One call per batch of publishes: the queue totals and the ids already stored are read once, and the
    new rows are inserted together, in order.
    """
    given = [item.id for item in items if isinstance(item, Admitted) and item.id_given]
    existing: dict[str, IntentRow | int] = dict(_live_rows(conn, given)) if given else {}
    count, used = pending_totals(conn)
    results: list[IntakeResult | None] = []
    staged = _Staged(results)
    for item in items:
        if isinstance(item, Refused):
            staged.add(item, now, State.REJECTED, item.size, item.code, item.detail)
            continue
        known = existing.get(item.id)
        if known is not None:
            if isinstance(known, int):  # staged earlier in this batch: insert it for its row
                staged.flush(conn)
                known = existing[item.id] = _stored(results[known])
            if known.app != item.app:
                detail = f"id {item.id!r} is already used by another app"
            elif same_intent(known.kind, known.payload, item.kind, item.payload):
                staged.flush(conn)  # the events of the rows before it go first
                announce(conn, known, now)
                results.append(IntakeResult(Outcome.DUPLICATE, known))
                continue
            else:
                detail = f"id {item.id!r} is already used by another intent of this app (another kind or payload)"
            staged.add(item, now, State.REJECTED, len(item.payload), "id_conflict", detail)
            continue
        size = len(item.payload)
        if (limits.max_items and count + 1 > limits.max_items) or (limits.max_bytes and used + size > limits.max_bytes):
            results.append(
                IntakeResult(
                    Outcome.QUEUE_FULL,
                    None,
                    f"queue full ({count} intents, {used} bytes pending; limits {limits.max_items} "
                    f"intents, {limits.max_bytes} bytes)",
                )
            )
            continue
        if item.expires is not None and item.expires <= now:
            code, detail = "expired_on_arrival", "its deadline had passed when it arrived"
            place = staged.add(item, now, State.EXPIRED, size, code, detail, item.priority, item.expires)
        else:
            place = staged.add(item, now, State.ACCEPTED, size, priority=item.priority, expires=item.expires)
            count, used = count + 1, used + size
        if item.id_given:
            existing[item.id] = place  # the same id again later in this batch is a duplicate
    staged.flush(conn)
    return cast("list[IntakeResult]", results)  # every place is filled by now


def _stored(result: IntakeResult | None) -> IntentRow:
    assert result is not None
    assert result.row is not None
    return result.row


def _live_rows(conn: sqlite3.Connection, ids: list[str]) -> dict[str, IntentRow]:
    """The stored (not rejected) intents with these ids."""
    found: dict[str, IntentRow] = {}
    unique = list(dict.fromkeys(ids))
    for chunk, chunk_marks in in_chunks(unique):
        for raw in conn.execute(f"{SELECT_ROW} WHERE id IN ({chunk_marks}) AND state <> 'rejected'", chunk):
            row = IntentRow.from_db(raw)
            found[row.id] = row
    return found


def announce(conn: sqlite3.Connection, row: IntentRow, now: int) -> None:
    """Store the intent's current status again as an event: the app sent it again and gets its status again."""
    conn.execute(
        "INSERT INTO events(id, app, kind, state, code, detail, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (row.id, row.app, row.kind, row.state, row.code, row.detail, now),
    )


def get(conn: sqlite3.Connection, intent_id: str) -> IntentRow:
    """The intent with this id, or with the only id that starts so (the live one if a rejected one shares it)."""
    if not intent_id:  # the start of every id: with one intent stored, `cancel ""` took it
        raise NotFoundError("give an intent id (or the start of one)")
    row = _row(conn, "id = ? ORDER BY state = 'rejected', seq DESC", intent_id)
    if row is not None:
        return row
    found = [r[0] for r in conn.execute(
        "SELECT DISTINCT id FROM intents WHERE substr(id, 1, ?) = ? LIMIT 3", (len(intent_id), intent_id)
    )]  # fmt: skip
    if len(found) > 1:
        raise NotFoundError(f"{intent_id!r} is the start of several ids ({', '.join(found[:2])}, ...): give more of it")
    if not found:
        raise NotFoundError(f"no intent with id {intent_id!r}")
    return get(conn, found[0])


def _transition(
    conn: sqlite3.Connection, row: IntentRow, event: Event, now: int, *, code: str = "", detail: str = ""
) -> IntentRow:
    result = step(row.state, event, sent=row.sent > 0)
    if not result.changed:
        return row
    attempt, expires, sent, sent_at = row.attempt, row.expires, row.sent, row.sent_at
    if Effect.NEW_ATTEMPT in result.effects:  # goes out at once, without the old deadline
        attempt, expires, sent, sent_at = row.attempt + 1, None, 0, 0
    conn.execute(
        "UPDATE intents SET state = ?, code = ?, detail = ?, updated = ?, attempt = ?, expires = ?, sent = ?,"
        " sent_at = ?, confirmed = 0 WHERE seq = ?",
        (result.state, code, detail[:MAX_DETAIL], now, attempt, expires, sent, sent_at, row.seq),
    )
    updated = _row(conn, "seq = ?", row.seq)
    assert updated is not None
    return updated


def cancel(conn: sqlite3.Connection, intent_id: str, now: int) -> IntentRow:
    """Cancel an intent that was never sent to the bridge."""
    return _transition(
        conn,
        get(conn, intent_id),
        Event.CANCEL,
        now,
        code="cancelled_by_operator",
        detail="cancelled with edge-outbox cancel",
    )


def reject_unsendable(conn: sqlite3.Connection, unsendable: list[tuple[int, str]], now: int) -> int:
    """End intents whose stored payload the wire cannot carry, given as (seq, why): `rejected/bad_json`,
    as today's intake answers the same payload. Returns how many ended."""
    ended = 0
    for seq, why in unsendable:
        row = _row(conn, "seq = ?", seq)
        if row is not None and row.state in sources(Event.UNSENDABLE):
            _transition(
                conn, row, Event.UNSENDABLE, now, code="bad_json", detail=f"cannot be sent to the bridge: {why}"
            )
            ended += 1
    return ended


RETRY_DETAIL = "queued again with edge-outbox retry"


def retry(conn: sqlite3.Connection, intent_id: str, now: int) -> IntentRow:
    """Queue a failed or expired intent again as a new attempt (clearing its deadline)."""
    return _transition(conn, get(conn, intent_id), Event.RETRY, now, code="retried_by_operator", detail=RETRY_DETAIL)


def retry_state(
    conn: sqlite3.Connection, state: State, now: int, *, after: int = 0, limit: int = -1
) -> list[IntentRow]:
    """Retry the intents in a retryable state stored after seq `after`, oldest first, at most `limit` of them
    (-1: all; `edge-outbox retry --state` goes in steps, edge_outbox.paced)."""
    found = conn.execute(f"{SELECT_ROW} WHERE state = ? AND seq > ? ORDER BY seq LIMIT ?", (state, after, limit))
    return [
        _transition(conn, row, Event.RETRY, now, code="retried_by_operator", detail=RETRY_DETAIL)
        for row in map(IntentRow.from_db, found.fetchall())
    ]


# Runs on every tick: it must go through the intents_deadline partial index, never scan the outbox
# (tests/unit/test_edge_plans.py).
EXPIRE_DUE_SQL = (
    "UPDATE intents SET state = ?, code = 'deadline', updated = ?,"
    " detail = 'its deadline passed before it could be forwarded'"
    f" WHERE {state_in(sources(Event.DEADLINE))} AND sent = 0 AND expires IS NOT NULL AND expires <= ?"
)


def expire_due(conn: sqlite3.Connection, now: int) -> int:
    """Expire every never-sent intent whose deadline has passed; returns how many."""
    cur = conn.execute(EXPIRE_DUE_SQL, (target(Event.DEADLINE), now, now))
    return cur.rowcount


# `listing` without payloads: `edge-outbox ls` shows none, and reading them held up to 256 KiB per intent
# listed in memory (550 MB for 2,000 intents of 250 KB; `--limit` goes to 100,000).
_SELECT_LISTED = "SELECT " + ", ".join("X'' AS payload" if c == "payload" else c for c in COLUMNS) + " FROM intents"


def listing(
    conn: sqlite3.Connection,
    state: State | None = None,
    app: str | None = None,
    limit: int = 50,
    *,
    payloads: bool = False,
) -> list[IntentRow]:
    """Newest first, optionally filtered by state and app; each row's payload is empty unless `payloads`."""
    where, args = [], []
    if state is not None:
        where.append("state = ?")
        args.append(str(state))
    if app is not None:
        where.append("app = ?")
        args.append(app)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    select = SELECT_ROW if payloads else _SELECT_LISTED
    rows = conn.execute(f"{select} {clause} ORDER BY seq DESC LIMIT ?", (*args, limit))
    return [IntentRow.from_db(r) for r in rows]


@dataclass(frozen=True, slots=True)
class Summary:
    counts: dict[str, int]
    bytes: dict[str, int]
    pending: int
    pending_bytes: int
    oldest_pending_created: int | None


# The creation time of the first intent stored (lowest seq) that is still pending, at any priority.
# `intents_pending` holds them by (priority DESC, seq): from each priority to the next lower one, the
# first entry is that priority's oldest, a few index entries in all. MIN(created) read every pending row,
# 0.2-0.8 s at 1,000,000 on the writer thread, at every metrics scrape and health report
# (bench/findings.md F35). Intents are stored in the order they were created, so it is the smallest
# creation time unless the clock stepped back.
_PENDING_SQL = sql_set(PENDING)
_OLDEST_PENDING = f"""
WITH RECURSIVE levels(priority) AS (
    SELECT MAX(priority) FROM intents WHERE state IN {_PENDING_SQL}
    UNION ALL
    SELECT (SELECT MAX(priority) FROM intents WHERE state IN {_PENDING_SQL} AND priority < levels.priority)
    FROM levels WHERE levels.priority IS NOT NULL
)
SELECT MIN((SELECT created FROM intents WHERE state IN {_PENDING_SQL} AND priority = levels.priority
            ORDER BY seq LIMIT 1))
FROM levels WHERE levels.priority IS NOT NULL
"""


def summary(conn: sqlite3.Connection) -> Summary:
    """Counts and bytes per state, and the oldest pending intent's creation time."""
    counts = {s.value: 0 for s in State}
    sizes = {s.value: 0 for s in State}
    for state, items, size in conn.execute("SELECT state, items, bytes FROM stats"):
        counts[state], sizes[state] = int(items), int(size)
    oldest = conn.execute(_OLDEST_PENDING).fetchone()[0]
    pending = sum(counts[s] for s in PENDING)
    return Summary(counts, sizes, pending, sum(sizes[s] for s in PENDING), oldest)


def end_revoked(conn: sqlite3.Connection, now: int) -> int:
    """End every pending intent because the bridge revoked this device.

    Intents never sent certainly never ran: `device_revoked`. Intents already sent may have run before
    the revocation and their result can no longer reach this device: `device_revoked_unknown`, so
    nobody mistakes "we cannot know" for "it did not happen".
    """
    # `state_in`, never `state IN (...)` of one state: this runs at every tick once the device is revoked,
    # and `state IN ('accepted')` missed the partial index, so each tick read every intent kept (75-340 ms at
    # 1,000,000, on the writer thread, every second, for as long as the revoked outbox ran).
    revocable = state_in(sources(Event.REVOKE))
    # Only a state an intent may still be cancelled in can mean "never sent" (forwarded: the bridge has it).
    unsent = state_in(sources(Event.REVOKE) & sources(Event.CANCEL))
    never_sent = conn.execute(
        "UPDATE intents SET state = ?, code = 'device_revoked', updated = ?,"
        " detail = 'this device was revoked at the bridge before the intent was sent; it never ran'"
        f" WHERE {unsent} AND sent = 0",
        (target(Event.REVOKE), now),
    ).rowcount
    sent = conn.execute(
        "UPDATE intents SET state = ?, code = 'device_revoked_unknown', updated = ?,"
        " detail = 'sent to the bridge before this device was revoked; whether it ran cannot be reported"
        " here any more (the bridge audit log knows)'"
        f" WHERE {revocable}",
        (target(Event.REVOKE), now),
    ).rowcount
    return never_sent + sent
