"""Real sqlite3 errors, sorted into faults of the disk or file (one line) and bugs (traceback)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from intent_contract.sqlite_faults import is_storage_fault


def busy(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with closing(sqlite3.connect(path, isolation_level=None, timeout=0)) as other:
            other.execute("BEGIN IMMEDIATE")
    finally:
        holder.close()


def not_a_database(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"junk" * 1000)
    with closing(sqlite3.connect(tmp_path / "junk.db")) as conn:
        conn.execute("SELECT * FROM sqlite_master")


def cannot_open(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "missing" / "x.db")


def read_only(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "r.db").close()
    with closing(sqlite3.connect(f"file:{tmp_path / 'r.db'}?mode=ro", uri=True)) as conn:
        conn.execute("CREATE TABLE t (x)")


def no_such_column(_tmp: Path) -> None:
    with closing(sqlite3.connect(":memory:")) as conn:
        conn.execute("SELECT nope FROM sqlite_master")


def syntax_error(_tmp: Path) -> None:
    with closing(sqlite3.connect(":memory:")) as conn:
        conn.execute("SELEKT 1")


def wrong_bindings(_tmp: Path) -> None:
    with closing(sqlite3.connect(":memory:")) as conn:
        conn.execute("SELECT ?", (1, 2))


def constraint(_tmp: Path) -> None:
    with closing(sqlite3.connect(":memory:")) as conn:
        conn.execute("CREATE TABLE t (x PRIMARY KEY)")
        conn.executemany("INSERT INTO t VALUES (?)", [(1,), (1,)])


@pytest.mark.parametrize(
    ("cause", "fault"),
    [
        (busy, True),
        (not_a_database, True),
        (cannot_open, True),
        (read_only, True),
        (no_such_column, False),
        (syntax_error, False),
        (wrong_bindings, False),
        (constraint, False),
    ],
)
def test_faults_and_bugs(tmp_path: Path, cause: Callable[[Path], None], fault: bool) -> None:
    with pytest.raises(sqlite3.Error) as caught:
        cause(tmp_path)
    assert is_storage_fault(caught.value) is fault
