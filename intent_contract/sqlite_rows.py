"""Many rows in one INSERT statement, for the group-commit writers (bench/findings.md F30).

One `execute` per row (or `executemany`) costs Python's sqlite3 module a bind and a step per row, and
each step lets go of the GIL and takes it back: with the event loop busy on the other thread, taking
it back waits. One statement for up to `CHUNKS[0]` rows binds them all at once and runs the inserts,
their trigger statements and upserts included, in one step without the GIL. The rows are written in
the order given, each seeing the ones before it, as with one statement per row.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator, Sequence

# Statement sizes, largest first: a batch goes as few statements as fit, and each size is one
# prepared statement in the connection's cache. 256 rows of 20 values bind 5,120, far below SQLite's
# limit of 32,766.
CHUNKS = (256, 64, 16, 4, 1)


class ManyRows:
    """`head` + `row` repeated (comma-separated) + `tail`, run over rows in as few statements as fit.

    `row` is the VALUES tuple with one `?` per value a row gives, e.g. "(?, ?, 0, ?)"; `tail` may hold
    an ON CONFLICT clause.
    """

    def __init__(self, head: str, row: str, tail: str = "") -> None:
        self._width = row.count("?")
        self._sql = {n: f"{head} VALUES {', '.join([row] * n)}{tail}" for n in CHUNKS}

    @classmethod
    def into(cls, table: str, columns: Sequence[str]) -> ManyRows:
        """Plain inserts of every column given."""
        return cls(f"INSERT INTO {table}({', '.join(columns)})", "(" + ", ".join("?" * len(columns)) + ")")

    def run(self, conn: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> None:
        """Write `rows` in order."""
        for _ in self._statements(conn, rows):
            pass

    def insert(self, conn: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> list[int]:
        """Insert `rows` in order into a table keyed INTEGER PRIMARY KEY AUTOINCREMENT; their keys, in order.

        With AUTOINCREMENT, SQLite gives each new row one more than the largest key the table ever had, so
        the rows of one statement get consecutive keys in the order written: the last one's key
        (`lastrowid`, which the trigger statements' own inserts do not change) gives them all.
        """
        keys: list[int] = []
        for n, last in self._statements(conn, rows):
            keys.extend(range(last - n + 1, last + 1))
        return keys

    def _statements(self, conn: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> Iterator[tuple[int, int]]:
        """Run the statements; yields each one's row count and last row's key."""
        start = 0
        while start < len(rows):
            n = next(size for size in CHUNKS if size <= len(rows) - start)
            chunk = rows[start : start + n]
            if any(len(values) != self._width for values in chunk):
                raise ValueError(f"each row must have {self._width} values")
            last = conn.execute(self._sql[n], list(itertools.chain.from_iterable(chunk))).lastrowid
            yield n, last or 0
            start += n
