"""What the forwarder reads and writes: the next batch to send, and the bridge's acks applied.

Plain functions on a sqlite3 connection, run inside the store's group commit (edge_outbox.store).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import orjson

from edge_outbox.db import SELECT_ROW, IntentRow, stored_state
from edge_outbox.states import RETRYABLE, Event, State, event_for_ack, step
from intent_contract.codec import Ack
from intent_contract.sql_text import in_chunks
from intent_contract.sqlite_rows import ManyRows
from intent_contract.wire import MAX_DETAIL

# Acks' changes: many rows in one statement (a row at most once in each), updated in the order of seq.
_ACK_UPDATES = ManyRows(
    "WITH changed(seq, state, code, detail, updated, attempt) AS (",
    "(?, ?, ?, ?, ?, ?)",
    ") UPDATE intents SET state = changed.state, code = changed.code, detail = changed.detail,"
    " updated = changed.updated, attempt = changed.attempt FROM changed WHERE intents.seq = changed.seq",
)
RERUN_CODE = "bridge_retry"  # the status code of an intent an operator retried at the bridge


def next_batch(conn: sqlite3.Connection, *, limit: int, max_bytes: int, sent_before: int, now: int) -> list[IntentRow]:
    """Intents to send: not yet accepted by the bridge, not sent since `sent_before` (ms), highest
    priority first, then oldest; at most `limit` rows and `max_bytes` of payload (at least one row).

    One sent after `now` was sent before this device's clock stepped back (a reboot with a flat RTC battery,
    a site without NTP): it is due again. Before, it waited until the clock passed its send time again,
    hours or years, though the bridge never had it."""
    rows = conn.execute(
        f"{SELECT_ROW} WHERE state = 'accepted' AND (sent_at < ? OR sent_at > ?) ORDER BY priority DESC, seq LIMIT ?",
        (sent_before, now, limit),
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
    rows = next_batch(conn, limit=limit, max_bytes=max_bytes, sent_before=sent_before, now=now)
    mark_sent(conn, [r.seq for r in rows], now)
    return rows


@dataclass(frozen=True, slots=True)
class AppliedAcks:
    changed: int  # intents whose state changed
    # (id, attempt) of each final result, to confirm to the bridge (also repeats and unknowns): the attempt
    # the bridge said the result is of (0: not said), so a confirm cannot cover a later attempt's result.
    final: list[tuple[str, int]]

    @property
    def final_ids(self) -> list[str]:
        return [intent_id for intent_id, _attempt in self.final]


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
    return AppliedAcks(len(updates), [(ack.id, ack.attempt) for ack in acks if ack.state.final])


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
