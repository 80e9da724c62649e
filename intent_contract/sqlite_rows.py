"""Many rows in one INSERT statement, for the group-commit writers (bench/findings.md F30).

One `execute` per row costs Python's sqlite3 module a statement lookup, a bind and a step each, and
each step lets go of the GIL and takes it back: with the event loop busy on the other thread, taking
it back waits. One statement for up to `CHUNKS[0]` rows binds them all at once and runs the inserts,
their trigger statements included, in one step without the GIL.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Sequence

# Statement sizes, largest first: a batch goes as few statements as fit, and each size is one
# prepared statement in the connection's cache. 256 rows of 16 columns bind 4,096 values, far below
# SQLite's limit of 32,766.
CHUNKS = (256, 64, 16, 4, 1)


class RowInserter:
    """INSERTs into one table with an INTEGER PRIMARY KEY AUTOINCREMENT, returning each new row's key.

    With AUTOINCREMENT, SQLite gives each new row one more than the largest key the table ever had, so
    the rows of one statement get consecutive keys in the order written: the last one's key
    (`lastrowid`, which the trigger statements' own inserts do not change) gives them all.
    """

    def __init__(self, table: str, columns: Sequence[str]) -> None:
        row = "(" + ", ".join("?" * len(columns)) + ")"
        head = f"INSERT INTO {table}({', '.join(columns)}) VALUES "
        self._width = len(columns)
        self._sql = {n: head + ", ".join([row] * n) for n in CHUNKS}

    def insert(self, conn: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> list[int]:
        """Insert `rows` (each in the columns' order), in order; their keys, in the same order."""
        keys: list[int] = []
        start = 0
        while start < len(rows):
            n = next(size for size in CHUNKS if size <= len(rows) - start)
            chunk = rows[start : start + n]
            if any(len(values) != self._width for values in chunk):
                raise ValueError(f"each row must have {self._width} values")
            last = conn.execute(self._sql[n], list(itertools.chain.from_iterable(chunk))).lastrowid
            assert last is not None
            keys.extend(range(last - n + 1, last + 1))
            start += n
        return keys
