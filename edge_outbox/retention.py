"""Retention: final intents and old status events deleted, as plain functions on a sqlite3 connection.

A purge long due (a site's first after an upgrade, or a week of heavy traffic) deletes a million rows or
more: callers run these in paced steps (edge_outbox.paced), never in one operation or transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from edge_outbox.app_sessions import oldest_cursor
from edge_outbox.errors import IllegalTransitionError
from edge_outbox.states import FINAL, State, sql_set
from intent_contract.sql_text import marks


def purge(
    conn: sqlite3.Connection,
    before: int,
    states: Iterable[State] = FINAL,
    dry_run: bool = False,
    limit: int = -1,
) -> int:
    """Delete intents in final states last changed before `before` (ms); pending ones are never deleted.

    With `dry_run`, count them instead; with a `limit`, delete at most that many (-1: all; see `paced.STEP`)."""
    chosen = [s for s in states if s in FINAL]
    if not chosen:
        raise IllegalTransitionError("only intents in a final state can be purged")
    # The first term repeats the intents_final index's condition so that SQLite uses the index.
    where = f"WHERE state IN {sql_set(FINAL)} AND state IN ({marks(chosen)}) AND updated < ?"
    if dry_run:
        return int(conn.execute(f"SELECT COUNT(*) FROM intents {where}", (*chosen, before)).fetchone()[0])
    text = f"DELETE FROM intents WHERE seq IN (SELECT seq FROM intents {where} LIMIT ?)"
    return conn.execute(text, (*chosen, before, limit)).rowcount


def prune_events(conn: sqlite3.Connection, upto_seq: int, before: int, limit: int = -1) -> int:
    """Drop events up to `upto_seq` (what every status consumer has) older than `before` (ms), at most
    `limit` of them (-1: all; see `paced.STEP`).

    The status history of an intent lives on in the intents table; events are only the messages.
    """
    return conn.execute(
        "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq <= ? AND at < ? LIMIT ?)",
        (upto_seq, before, limit),
    ).rowcount


def prune_seen_events(conn: sqlite3.Connection, wanted_after: int, before: int, limit: int = -1) -> int:
    """Events every consumer has (after `wanted_after` a connected one may still read; the stored positions of
    app sessions count too), older than `before` (ms), are dropped: `prune_events`."""
    stored = oldest_cursor(conn)
    upto = wanted_after if stored is None else min(wanted_after, stored)
    return prune_events(conn, upto, before, limit)
