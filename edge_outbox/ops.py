"""Every read and write of intents, as plain functions on a sqlite3 connection.

The running outbox calls the writing ones inside its group commit (edge_outbox.store); the ops CLI
calls the same functions inside its own transaction. Either way, triggers keep stats and events exact.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, cast

import orjson

from edge_outbox.db import COLUMNS, EVENT_COLUMNS, SELECT_ROW, IntentRow, StatusEvent, pending_totals, stored_state
from edge_outbox.errors import IllegalTransitionError, NotFoundError
from edge_outbox.intake_rules import Admitted, Refused
from edge_outbox.states import (
    FINAL,
    PENDING,
    RETRYABLE,
    Effect,
    Event,
    State,
    event_for_ack,
    sources,
    sql_set,
    state_in,
    step,
    target,
)
from intent_contract.codec import Ack
from intent_contract.sql_text import in_chunks, marks
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
# Acks' changes: many rows in one statement (a row at most once in each), updated in the order of seq.
_ACK_UPDATES = ManyRows(
    "WITH changed(seq, state, code, detail, updated, attempt) AS (",
    "(?, ?, ?, ?, ?, ?)",
    ") UPDATE intents SET state = changed.state, code = changed.code, detail = changed.detail,"
    " updated = changed.updated, attempt = changed.attempt FROM changed WHERE intents.seq = changed.seq",
)
# Rows deleted per store operation by the running outbox's retention: an operation's savepoint keeps every
# page it changes in memory (intent_contract.sqlite_writer), so a purge long due goes in such steps.
PURGE_BATCH = 5000
RERUN_CODE = "bridge_retry"  # the status code of an intent an operator retried at the bridge
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
            if known.app == item.app:
                staged.flush(conn)  # the events of the rows before it go first
                announce(conn, known, now)
                results.append(IntakeResult(Outcome.DUPLICATE, known))
                continue
            detail = f"id {item.id!r} is already used by another app"
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


def retry(conn: sqlite3.Connection, intent_id: str, now: int) -> IntentRow:
    """Queue a failed or expired intent again as a new attempt (clearing its deadline)."""
    return _transition(
        conn,
        get(conn, intent_id),
        Event.RETRY,
        now,
        code="retried_by_operator",
        detail="queued again with edge-outbox retry",
    )


def retry_state(conn: sqlite3.Connection, state: State, now: int) -> list[IntentRow]:
    """Retry every intent in a retryable state."""
    rows = [IntentRow.from_db(r) for r in conn.execute(f"{SELECT_ROW} WHERE state = ? ORDER BY seq", (state,))]
    return [retry(conn, r.id, now) for r in rows]


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


def purge(
    conn: sqlite3.Connection,
    before: int,
    states: Iterable[State] = FINAL,
    dry_run: bool = False,
    limit: int = -1,
) -> int:
    """Delete intents in final states last changed before `before` (ms); pending ones are never deleted.

    With `dry_run`, count them instead; with a `limit`, delete at most that many (-1: all; see `PURGE_BATCH`)."""
    chosen = [s for s in states if s in FINAL]
    if not chosen:
        raise IllegalTransitionError("only intents in a final state can be purged")
    # The first term repeats the intents_final index's condition so that SQLite uses the index.
    where = f"WHERE state IN {sql_set(FINAL)} AND state IN ({marks(chosen)}) AND updated < ?"
    if dry_run:
        return int(conn.execute(f"SELECT COUNT(*) FROM intents {where}", (*chosen, before)).fetchone()[0])
    text = f"DELETE FROM intents WHERE seq IN (SELECT seq FROM intents {where} LIMIT ?)"
    return conn.execute(text, (*chosen, before, limit)).rowcount


def listing(
    conn: sqlite3.Connection, state: State | None = None, app: str | None = None, limit: int = 50
) -> list[IntentRow]:
    """Newest first, optionally filtered by state and app."""
    where, args = [], []
    if state is not None:
        where.append("state = ?")
        args.append(str(state))
    if app is not None:
        where.append("app = ?")
        args.append(app)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(f"{SELECT_ROW} {clause} ORDER BY seq DESC LIMIT ?", (*args, limit))
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


def prune_events(conn: sqlite3.Connection, upto_seq: int, before: int, limit: int = -1) -> int:
    """Drop events up to `upto_seq` (what every status consumer has) older than `before` (ms), at most
    `limit` of them (-1: all; see `PURGE_BATCH`).

    The status history of an intent lives on in the intents table; events are only the messages.
    """
    return conn.execute(
        "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq <= ? AND at < ? LIMIT ?)",
        (upto_seq, before, limit),
    ).rowcount


def app_statuses(conn: sqlite3.Connection, app: str, after: int, limit: int) -> list[StatusEvent]:
    """An app's stored status events after `after`, oldest first (for a replay request)."""
    rows = conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? AND app = ? ORDER BY seq LIMIT ?", (after, app, limit)
    )
    return [StatusEvent.from_db(r) for r in rows]


def next_batch(conn: sqlite3.Connection, *, limit: int, max_bytes: int, sent_before: int) -> list[IntentRow]:
    """Intents to send: not yet accepted by the bridge, not sent since `sent_before` (ms), highest
    priority first, then oldest; at most `limit` rows and `max_bytes` of payload (at least one row)."""
    rows = conn.execute(
        f"{SELECT_ROW} WHERE state = 'accepted' AND sent_at < ? ORDER BY priority DESC, seq LIMIT ?",
        (sent_before, limit),
    )
    batch: list[IntentRow] = []
    used = 0
    for raw in rows:
        row = IntentRow.from_db(raw)
        if batch and used + row.size > max_bytes:
            break
        batch.append(row)
        used += row.size
    return batch


def mark_sent(conn: sqlite3.Connection, seqs: list[int], now: int) -> None:
    """Record that these intents are about to go to the bridge (so they can no longer be cancelled)."""
    for chunk, chunk_marks in in_chunks(seqs):
        conn.execute(
            f"UPDATE intents SET sent = sent + 1, sent_at = ? WHERE seq IN ({chunk_marks}) AND state = 'accepted'",
            (now, *chunk),
        )


def take_batch(conn: sqlite3.Connection, *, limit: int, max_bytes: int, sent_before: int, now: int) -> list[IntentRow]:
    """`next_batch`, marked sent in the same transaction: one store call per batch for the send loop."""
    rows = next_batch(conn, limit=limit, max_bytes=max_bytes, sent_before=sent_before)
    mark_sent(conn, [r.seq for r in rows], now)
    return rows


@dataclass(frozen=True, slots=True)
class AppliedAcks:
    changed: int  # intents whose state changed
    final_ids: list[str]  # ids with a final result, to confirm to the bridge (also repeats and unknowns)


def apply_acks(conn: sqlite3.Connection, acks: list[Ack], now: int) -> AppliedAcks:
    """Apply the bridge's acks; repeated or late ones change nothing (acks come at least once).

    This runs twice per intent while a backlog drains, so it reads only the columns the state machine
    needs and writes the changes, a row's in the order they come, as few statements as it can: each
    statement is one step, one release of the GIL (bench/findings.md F39).
    """
    current = _ack_targets(conn, list({ack.id for ack in acks}))  # id -> (seq, state, sent, attempt)
    updates: list[tuple[int, State, str, str, int, int]] = []  # (seq, state, code, detail, updated, attempt)
    for ack in acks:
        found = current.get(ack.id)
        if found is None:
            continue  # purged here already, or never ours: confirming it is harmless
        seq, state, sent, attempt = found
        if ack.attempt and ack.attempt < attempt:
            continue  # the word on an older attempt (this one was retried since): stale
        if ack.attempt > attempt:
            # A newer attempt than ours: an operator retried it at the bridge. A final row runs again
            # (forwarded, with the bridge's attempt); a pending one takes the bridge's attempt.
            if state in RETRYABLE:
                rerun = step(state, Event.RERUN)
                state, attempt = rerun.state, ack.attempt
                updates.append((seq, state, RERUN_CODE, f"retried at the bridge (attempt {attempt})", now, attempt))
            elif not state.final:
                attempt = ack.attempt
                updates.append((seq, state, "", "", now, attempt))
            current[ack.id] = (seq, state, sent, attempt)
        result = step(state, event_for_ack(ack.state), sent=sent > 0)
        if result.changed:
            detail = ack.detail[:MAX_DETAIL] if ack.state.final else ""
            updates.append((seq, result.state, ack.code, detail, now, attempt))
            current[ack.id] = (seq, result.state, sent, attempt)
    # A statement changes a row at most once (SQLite documents that it uses one of the joined rows): a
    # row changed twice (a retry at the bridge, then its result) has its second change in the next one.
    # Within a statement SQLite updates the rows in the order of seq; each intent's changes keep theirs.
    run: list[tuple[int, State, str, str, int, int]] = []
    seen: set[int] = set()
    for update in updates:
        if update[0] in seen:
            _ACK_UPDATES.run(conn, run)
            run, seen = [], set()
        run.append(update)
        seen.add(update[0])
    _ACK_UPDATES.run(conn, run)
    return AppliedAcks(len(updates), [ack.id for ack in acks if ack.state.final])


def _ack_targets(conn: sqlite3.Connection, ids: list[str]) -> dict[str, tuple[int, State, int, int]]:
    """(seq, state, sent, attempt) of each of `ids` not rejected here, read as one JSON value per IN_CHUNK
    ids: one step, where reading row by row let go of the GIL and waited to take it back at each row."""
    current: dict[str, tuple[int, State, int, int]] = {}
    for chunk, chunk_marks in in_chunks(ids):
        (found,) = conn.execute(
            "SELECT json_group_array(json_array(seq, id, state, sent, attempt)) FROM intents"
            f" WHERE id IN ({chunk_marks}) AND state <> 'rejected'",
            chunk,
        ).fetchone()
        for seq, intent_id, state, sent, attempt in orjson.loads(found):
            current[intent_id] = (seq, stored_state(state), sent, attempt)
    return current


def end_revoked(conn: sqlite3.Connection, now: int) -> int:
    """End every pending intent because the bridge revoked this device.

    Intents never sent certainly never ran: `device_revoked`. Intents already sent may have run before
    the revocation and their result can no longer reach this device: `device_revoked_unknown`, so
    nobody mistakes "we cannot know" for "it did not happen".
    """
    revocable = sql_set(sources(Event.REVOKE))
    # Only a state an intent may still be cancelled in can mean "never sent" (forwarded: the bridge has it).
    unsent = sql_set(sources(Event.REVOKE) & sources(Event.CANCEL))
    never_sent = conn.execute(
        "UPDATE intents SET state = ?, code = 'device_revoked', updated = ?,"
        " detail = 'this device was revoked at the bridge before the intent was sent; it never ran'"
        f" WHERE state IN {unsent} AND sent = 0",
        (target(Event.REVOKE), now),
    ).rowcount
    sent = conn.execute(
        "UPDATE intents SET state = ?, code = 'device_revoked_unknown', updated = ?,"
        " detail = 'sent to the bridge before this device was revoked; whether it ran cannot be reported"
        " here any more (the bridge audit log knows)'"
        f" WHERE state IN {revocable}",
        (target(Event.REVOKE), now),
    ).rowcount
    return never_sent + sent
