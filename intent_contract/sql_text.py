"""SQL text shared by the edge's and the bridge's SQLite stores. Pure: strings only."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def one_of(column: str, values: Sequence[str]) -> str:
    """The condition "`column` is one of `values`" (fixed enum values, never user input, at least one).

    One value is written `column = 'v'`, never `column IN ('v')`: SQLite uses a partial index
    (`... WHERE state = 'queued'`) only for a query holding that very term, and with the IN form every
    executor claim and every edge tick's deadline check scanned the whole table (bench/findings.md, F15).
    """
    if not values:
        raise ValueError(f"no values for {column}")
    if len(values) == 1:
        return f"{column} = '{values[0]}'"
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


IN_CHUNK = 500  # values per `IN (...)`: statements stay far below SQLite's limit of 32,766 parameters


def marks(values: Collection[object]) -> str:
    """One `?` placeholder per value, for `IN (...)`."""
    return ",".join("?" * len(values))


def in_chunks(values: Sequence[T]) -> Iterator[tuple[Sequence[T], str]]:
    """`values` in slices of at most IN_CHUNK, each with its `?` marks, for one `IN (...)` statement per slice."""
    for start in range(0, len(values), IN_CHUNK):
        chunk = values[start : start + IN_CHUNK]
        yield chunk, marks(chunk)
