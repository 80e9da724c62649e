"""Work on many rows in paced steps, so that the running outbox's intake is never held for long.

A purge long due (a site's first after an upgrade, or a week of heavy traffic) deletes a million rows,
and `edge-outbox retry --state failed` can queue as many again. Such work goes in steps of at most STEP
rows, each one store operation of the running outbox (one transaction of an ops command), and after each
step it leaves the database to others for as long as the step took (`pause_after`). An app's publish
that arrives meanwhile waits for one step at most, and commits in the pause after it: one purge
operation of 5,000 rows after another held every publish of a first purge of 1,000,000 rows about
25 ms, 30 times its wait without it, for as long as the purge ran (docs/durability.md).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

# Rows per step: a purge's step takes about 1.5 ms of the writer, a retry's about 20 ms. An operation's
# savepoint also keeps every page it changes in memory (intent_contract.sqlite_writer), which this bounds too.
STEP = 500
MAX_PAUSE_S = 1.0


def pause_after(step_s: float) -> float:
    """Seconds paced work leaves the database to others after a step that took `step_s`: as long again (it
    holds the writer half the time at most), never more than MAX_PAUSE_S."""
    return min(max(step_s, 0.0), MAX_PAUSE_S)


async def yield_to_intake(seconds: float) -> None:
    """The running outbox's pause between two steps."""
    await asyncio.sleep(seconds)


async def in_operations(call: Callable[..., Awaitable[int]], delete: Callable[..., int], *args: Any) -> int:
    """For the running outbox: run `delete(conn, *args, limit=STEP)` as one store operation (`call`, e.g.
    `Store.call`) after another until one deletes fewer, pausing between them (`pause_after`); returns how
    many were deleted."""
    total = 0
    while True:
        started = time.monotonic()
        deleted = await call(delete, *args, limit=STEP)
        total += deleted
        if deleted < STEP:
            return total
        await yield_to_intake(pause_after(time.monotonic() - started))


def rest_between_transactions(seconds: float) -> None:
    """An ops command's pause between two steps."""
    time.sleep(seconds)


def in_transactions(conn: sqlite3.Connection, step: Callable[[sqlite3.Connection, int], int]) -> int:
    """For an ops command: run `step(conn, STEP)`, which handles at most that many rows and says how many,
    in a transaction of its own on `conn` (autocommit mode), again until it handles fewer, pausing between
    (`pause_after`); returns how many it handled. The running outbox's writer waits for one step at most."""
    total = 0
    while True:
        started = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = step(conn, STEP)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        total += done
        if done < STEP:
            return total
        rest_between_transactions(pause_after(time.monotonic() - started))
