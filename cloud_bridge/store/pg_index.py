"""Schema steps that only build indexes, on PostgreSQL: built with CREATE INDEX CONCURRENTLY.

A plain CREATE INDEX holds a SHARE lock on its table for the whole build, which every INSERT, UPDATE and DELETE
conflicts with: on a table of millions of intents the running nodes' writes stopped for the build's time (or,
with the step's lock_timeout, for that long at each try). CONCURRENTLY takes a lock writes pass, at the cost of
running outside a transaction: a build that is interrupted (a node killed, the statement cancelled) leaves the
index INVALID, and `IF NOT EXISTS` would then keep it, unusable, for good; it is dropped and built again.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg

from cloud_bridge.store.migrations import Migration

_INDEX = re.compile(r"CREATE INDEX (?P<name>[a-z_][a-z0-9_]*) (?P<rest>ON .*)", re.DOTALL)


def index_builds(step: Migration) -> list[tuple[str, str]] | None:
    """(index name, its CONCURRENTLY statement) for each statement of `step` when each one is a CREATE INDEX;
    None when any is something else (the step then runs in one transaction, its indexes included)."""
    builds = []
    for statement in step.statements:
        if (match := _INDEX.fullmatch(statement.strip())) is None:
            return None
        name = match["name"]
        builds.append((name, f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} {match['rest']}"))
    return builds


def build(conn: psycopg.Connection[Any], name: str, statement: str) -> None:
    """Build one index on `conn` (autocommit), after dropping one of that name an interrupted build left INVALID."""
    row = conn.execute("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", (name,)).fetchone()
    if row is not None and not row[0]:
        conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}".encode())
    conn.execute(statement.encode())
