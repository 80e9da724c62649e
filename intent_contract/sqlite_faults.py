"""Which sqlite3 errors are faults of the disk or the database file, and which are bugs in our SQL.

A full disk, a busy, locked, unreadable or read-only file, a file that is not a database: an operator
can act on those, so they become one-line errors of our own. A syntax error, a missing column or a
misused API is a bug and must keep its traceback. SQLite's primary result code tells them apart.
"""

from __future__ import annotations

import sqlite3

# Primary result codes (https://sqlite.org/rescode.html) that come from the environment, not the SQL.
_FAULTS = frozenset(
    {"PERM", "BUSY", "LOCKED", "NOMEM", "READONLY", "IOERR", "CORRUPT", "FULL", "CANTOPEN", "PROTOCOL", "NOTADB"}
)


def _primary(exc: sqlite3.Error) -> str:
    name: str = getattr(exc, "sqlite_errorname", None) or ""  # e.g. SQLITE_IOERR_WRITE; absent for API misuse
    return name.removeprefix("SQLITE_").split("_")[0]


def is_storage_fault(exc: sqlite3.Error) -> bool:
    """True for an error of the disk or the database file; False for one of our SQL or API use."""
    return _primary(exc) in _FAULTS


def is_damaged(exc: sqlite3.Error) -> bool:
    """True when the file is no SQLite database or a damaged one: no retry mends it, an operator must."""
    return _primary(exc) in {"CORRUPT", "NOTADB"}


def cannot_open(exc: sqlite3.Error) -> bool:
    """True when SQLite could not open the file (or the files beside it: a WAL database's -shm and -wal)."""
    return _primary(exc) == "CANTOPEN"
