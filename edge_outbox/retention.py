"""Retention: final intents and old status events deleted, in paced steps.

A purge long due (a site's first after an upgrade, or a week of heavy traffic) deletes a million rows or
more. It goes in steps of at most PURGE_STEP rows, each one store operation of the running outbox (one
transaction of `edge-outbox purge`), and after each step it leaves the database to others for as long as
the step took (`pause_after`). An app's publish that arrives during a purge so waits for one step at
most, and commits in the pause after it: one purge operation of 5,000 rows after another held every
publish of a first purge of 1,000,000 rows about 25 ms, 30 times its wait without it, for as long as
the purge ran (docs/durability.md).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from edge_outbox.errors import IllegalTransitionError
from edge_outbox.states import FINAL, State, sql_set
from intent_contract.sql_text import marks

# Rows deleted per step: about 3 ms of the writer's time. An operation's savepoint also keeps every page it
# changes in memory (intent_contract.sqlite_writer), which this bounds too.
PURGE_STEP = 500
MAX_PAUSE_S = 1.0


def pause_after(step_s: float) -> float:
    """Seconds a purge leaves the database to others after a step that took `step_s`: as long again (the
    purge holds the writer half the time at most), never more than MAX_PAUSE_S."""
    return min(max(step_s, 0.0), MAX_PAUSE_S)


async def yield_to_intake(seconds: float) -> None:
    """The running outbox's pause between two steps of a purge."""
    await asyncio.sleep(seconds)


async def purge_paced(call: Callable[..., Awaitable[int]], delete: Callable[..., int], *args: Any) -> int:
    """Run `delete(conn, *args, limit=PURGE_STEP)` as one store operation (`call`, e.g. `Store.call`) after
    another until one deletes fewer, pausing between them (`pause_after`); returns how many were deleted."""
    total = 0
    while True:
        started = time.monotonic()
        deleted = await call(delete, *args, limit=PURGE_STEP)
        total += deleted
        if deleted < PURGE_STEP:
            return total
        await yield_to_intake(pause_after(time.monotonic() - started))


def rest_between_transactions(seconds: float) -> None:
    """An ops command's pause between two steps of a purge."""
    time.sleep(seconds)


def purge_in_transactions(conn: sqlite3.Connection, delete: Callable[..., int], *args: Any) -> int:
    """`purge_paced` for an ops command: each step is a transaction of its own on `conn` (autocommit mode),
    so the running outbox's writer waits for the lock one step at most."""
    total = 0
    while True:
        started = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")
        try:
            deleted = delete(conn, *args, limit=PURGE_STEP)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        total += deleted
        if deleted < PURGE_STEP:
            return total
        rest_between_transactions(pause_after(time.monotonic() - started))


def purge(
    conn: sqlite3.Connection,
    before: int,
    states: Iterable[State] = FINAL,
    dry_run: bool = False,
    limit: int = -1,
) -> int:
    """Delete intents in final states last changed before `before` (ms); pending ones are never deleted.

    With `dry_run`, count them instead; with a `limit`, delete at most that many (-1: all; see `PURGE_STEP`)."""
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
    `limit` of them (-1: all; see `PURGE_STEP`).

    The status history of an intent lives on in the intents table; events are only the messages.
    """
    return conn.execute(
        "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE seq <= ? AND at < ? LIMIT ?)",
        (upto_seq, before, limit),
    ).rowcount
