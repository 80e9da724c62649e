"""The outbox database as the ops commands open it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edge_outbox import db
from edge_outbox.errors import StorageError
from intent_contract.sqlite_faults import is_storage_fault


@contextmanager
def connection(data_dir: Path) -> Iterator[sqlite3.Connection]:
    """The outbox database; a fault of the disk or the file becomes a StorageError, a bug in our SQL does not."""
    try:
        conn = db.connect(data_dir, create=False)
        try:
            yield conn
        finally:
            conn.close()
    except sqlite3.Error as exc:
        if not is_storage_fault(exc):
            raise
        raise StorageError(db.fault_text(data_dir, exc, "database error in")) from exc
