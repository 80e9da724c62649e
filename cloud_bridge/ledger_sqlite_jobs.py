"""The executor's rows on the SQLite ledger: which rows are due or lapsed, claiming them, finishing them.

Pure SQL text and functions of a connection that the writer thread runs (`ledger_sqlite.SqliteLedger`);
every UPDATE of a state sets an event's target and matches only its source states (`ledger_states`).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence

from cloud_bridge.ledger import LedgerEntry, audit_params, claimed_entry, entry_from_row, log_context
from cloud_bridge.ledger_finish import Finish
from cloud_bridge.ledger_sqlite_schema import AUDIT_ROWS
from cloud_bridge.ledger_states import AUDIT, FINISH, LedgerEvent, sources, state_in, target
from cloud_bridge.usage import merged, tally
from cloud_bridge.usage_sql import UPSERT as USAGE_UPSERT
from cloud_bridge.usage_sql import upsert_rows
from intent_contract.codec import Ack
from intent_contract.sql_text import in_chunks, marks

logger = logging.getLogger(__name__)


# The executor's queries, each served by a partial index (tests/unit/test_ledger_sqlite_plans.py holds them to
# it): a claim that scans the table costs O(ledger) per job, and the ledger holds every delivered row too.
def lapsed_sql(kinds: int, of_tenant: bool = False) -> str:
    """Running rows of `kinds` kinds (of one tenant) whose lease ran out (params: now, *kinds, [tenant,]
    limit), first run out first."""
    return (
        f"SELECT * FROM intents WHERE {state_in(sources(LedgerEvent.RECLAIM))}"
        f" AND lease_until < ? AND kind IN ({marks(range(kinds))}){' AND tenant = ?' if of_tenant else ''}"
        " ORDER BY lease_until LIMIT ?"
    )


def due_sql(kinds: int, of_tenant: bool = False) -> str:
    """Due queued rows of `kinds` kinds (of one tenant) (params: *kinds, [tenant,] now, limit), highest
    priority then oldest first."""
    return (
        f"SELECT * FROM intents WHERE {state_in(sources(LedgerEvent.CLAIM))}"
        f" AND kind IN ({marks(range(kinds))}){' AND tenant = ?' if of_tenant else ''} AND next_run <= ?"
        " ORDER BY priority DESC, seq LIMIT ?"
    )


_CLAIMED = f"state = '{target(LedgerEvent.CLAIM)}', tries = tries + 1, owner = ?, lease_until = ?, updated = ?"
HELD = "device_id = ? AND intent_id = ? AND attempt = ? AND tries = ?"
# A job's final state, per finishing event (params: code, detail, now, and HELD's).
_FINISH_SQL = {
    event: f"UPDATE intents SET state = '{target(event)}', code = ?, detail = ?, updated = ?, owner = ''"
    f" WHERE {HELD} AND {state_in(sources(event))}"
    for event in FINISH.values()
}


def finish_rows(conn: sqlite3.Connection, finishes: list[Finish]) -> list[Ack]:
    """Record each finish's state on the row its entry holds; a row no longer held is left alone (logged).

    One UPDATE per row (each must match its holder), then the audit rows in one statement and the usage
    counts added up, one upsert per (tenant, device, kind, day) (`cloud_bridge.ledger_finish`)."""
    acks: list[Ack] = []
    audits: list[tuple[object, ...]] = []
    tallies = []
    for f in finishes:
        entry, event = f.entry, FINISH[f.state]
        cursor = conn.execute(
            _FINISH_SQL[event], (f.code, f.detail, f.now, entry.device_id, entry.intent_id, entry.attempt, entry.tries)
        )
        if cursor.rowcount == 0:
            logger.warning("finish of %s/%s ignored: no longer held", entry.device_id, entry.intent_id,
                           extra=log_context(entry, code="not_held"))  # fmt: skip
            row = conn.execute(
                "SELECT * FROM intents WHERE device_id = ? AND intent_id = ?", (entry.device_id, entry.intent_id)
            ).fetchone()
            acks.append(entry_from_row(row).ack() if row is not None else entry.ack())
            continue
        audit = AUDIT[event]
        assert audit is not None
        audits.append(audit_params(f.now, entry, audit, f.integration, f.code, f.detail))
        tallies.append(tally(entry.tenant, entry.device_id, entry.kind, audit, f.now, f.seconds))
        acks.append(f.ack())
    AUDIT_ROWS.run(conn, audits)
    conn.executemany(USAGE_UPSERT, upsert_rows(merged(tallies), ""))
    return acks


def claim_rows(
    conn: sqlite3.Connection, rows: Sequence[sqlite3.Row], owner: str, until: float, now: float
) -> list[LedgerEntry]:
    """Move `rows` (selected whole) to running for `owner` until `until`; the entries as claimed.

    One UPDATE per IN_CHUNK rows, not one per row (bench/findings.md F24)."""
    seqs = [row["seq"] for row in rows]
    for chunk, chunk_marks in in_chunks(seqs):
        conn.execute(f"UPDATE intents SET {_CLAIMED} WHERE seq IN ({chunk_marks})", (owner, until, now, *chunk))
    return [claimed_entry(row, owner, until, now) for row in rows]


# Rows claimed ahead and never started, given back by a stopping executor (params: HELD's).
UNCLAIM_SQL = (
    f"UPDATE intents SET state = '{target(LedgerEvent.RESUME)}', tries = tries - 1, owner = '', lease_until = 0"
    f" WHERE {HELD} AND {state_in(sources(LedgerEvent.RESUME))}"
)


def unclaim_rows(conn: sqlite3.Connection, entries: Sequence[LedgerEntry]) -> int:
    """Put `entries` (claimed, never started) back in the queue as they were before their claim."""
    params = [(e.device_id, e.intent_id, e.attempt, e.tries) for e in entries]
    return conn.executemany(UNCLAIM_SQL, params).rowcount
