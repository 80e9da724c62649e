"""Turning a SQLite file to WAL when other processes may be opening it at the same moment.

The change of journal mode needs the file to itself, and SQLite answers `database is locked` at once
when another connection is busy with it, without waiting in the busy handler as other statements do:
two processes opening a new data directory together (a node starting beside a CLI command) made one
of them fail. So the change is tried again for a while; a file already in WAL needs no change at all.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

# The WAL file is cut back to this once a checkpoint let SQLite start it again (`PRAGMA journal_size_limit`,
# set on each connection that writes). Without a limit SQLite reuses the file from its start but keeps it as
# large as it ever grew: a long read (a backup, an open sqlite3 shell) during heavy writes holds back every
# checkpoint, and the WAL it grew meanwhile (66 MiB for 100,000 intents of 0.5 KiB at the edge) stayed on
# disk until the process stopped. Steady writing keeps it near the autocheckpoint's 4 MiB, well under this.
WAL_SIZE_LIMIT = 16 * 1024 * 1024


def use_wal(
    conn: sqlite3.Connection,
    *,
    timeout: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Put the file of `conn` (in autocommit mode) in WAL mode, retrying a locked file for `timeout` seconds,
    with the WAL cut back to WAL_SIZE_LIMIT after a checkpoint (for this connection's writes)."""
    conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    deadline = clock() + timeout
    pause = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "") != "SQLITE_BUSY" or clock() >= deadline:
                raise
        sleep(pause)
        pause = min(pause * 2, 0.1)
