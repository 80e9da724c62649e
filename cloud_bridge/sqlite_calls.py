"""Short transactions on a SQLite file, a connection per call, for the bridge's readers and light writers
(the fleet tables, the ledger's usage and audit reads, operator commands), beside a file's own writer.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from cloud_bridge.errors import TransientError
from intent_contract import sqlite_wal

# A transaction of either driver: a connection whose rows read by column name, committed at the end.
Transaction = Callable[[], AbstractContextManager[Any]]


def sqlite_transaction(path: Path, what: str, *, synchronous: str = "FULL") -> Transaction:
    """Transactions on a SQLite file: a connection per call, as the registry does (each is one short
    transaction; busy_timeout waits another writer out). `synchronous` NORMAL (in WAL: no fsync per commit,
    the last commits may be lost on power loss, never corrupted) is for data that may lose its last second."""

    @contextlib.contextmanager
    def transaction() -> Iterator[sqlite3.Connection]:
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=10, isolation_level=None)) as conn:
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA synchronous = {synchronous}")
                conn.execute(f"PRAGMA journal_size_limit = {sqlite_wal.WAL_SIZE_LIMIT}")
                # Deferred: every writing call writes first, so it takes the lock (waiting) at its start.
                conn.execute("BEGIN")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise TransientError(f"{what} in {path}: {exc}", code="store_error") from exc

    return transaction
