"""Versioned schema migrations: plain data, and the one rule for when a bridge may apply them itself.

Each backend keeps an ordered list of `Migration`s and records the version it reached (SQLite:
`PRAGMA user_version`; PostgreSQL: the `schema_version` table). `cloud-bridge db upgrade` applies
every pending one. `run` applies them at start only when that is safe: each pending step is marked
`online` (it only adds tables, columns with defaults or indexes, so nodes still on the older code keep
working). A database newer than the code is never touched: an older bridge must not run on it. The
operators' commands apply nothing (`require_current`): a step applied under the older nodes makes the
store newer than their code, and they would refuse it at their next start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cloud_bridge.errors import SchemaError

__all__ = ["Migration", "SchemaError", "latest", "pending", "require_current"]


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: `statements` run in order in one transaction."""

    version: int
    summary: str
    statements: tuple[str, ...]
    online: bool = True

    def __post_init__(self) -> None:
        if self.version < 1 or not self.statements:
            raise ValueError("a migration has a version >= 1 and at least one statement")


def latest(migrations: Sequence[Migration]) -> int:
    """The version the code expects; the list must be numbered 1, 2, ... without gaps."""
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migrations must be numbered 1..n in order, got {versions}")
    return len(versions)


def pending(current: int, migrations: Sequence[Migration], *, at_start: bool, what: str) -> list[Migration]:
    """The steps to apply from `current`; SchemaError when the database is newer than the code, or
    (at start) when a pending step is not online-safe and needs `cloud-bridge db upgrade`."""
    known = latest(migrations)
    if current > known:
        raise _newer(current, known, what)
    steps = [m for m in migrations if m.version > current]
    offline = [m for m in steps if not m.online]
    if at_start and offline:
        raise SchemaError(
            f"{what} needs schema step {offline[0].version} ({offline[0].summary}), which is not safe while other"
            " nodes run: stop them and run `cloud-bridge db upgrade`"
        )
    return steps


def require_current(current: int, migrations: Sequence[Migration], *, what: str) -> None:
    """SchemaError unless the database is at the code's version: for the operators' commands, which change no
    schema. They used to apply pending steps as a node does at start, and a `devices ls` of a newer
    cloud-bridge made the store newer than the nodes still running on it, which then refused to start again."""
    known = latest(migrations)
    if current > known:
        raise _newer(current, known, what)
    if current < known:
        raise SchemaError(
            f"{what} has schema version {current}, older than this bridge's ({known}): an operator's command changes"
            " no schema (nodes of the older version would refuse the store after it); start a node of this version,"
            " which applies the steps, or run `cloud-bridge db upgrade`"
        )


def _newer(current: int, known: int, what: str) -> SchemaError:
    return SchemaError(
        f"{what} has schema version {current}, newer than this bridge knows ({known}); upgrade the bridge"
    )
