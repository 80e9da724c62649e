"""Versioned schema migrations: plain data, and the one rule for when a bridge may apply them itself.

Each backend keeps an ordered list of `Migration`s and records the version it reached (SQLite:
`PRAGMA user_version`; PostgreSQL: the `schema_version` table). `cloud-bridge db upgrade` applies
every pending one. `run` applies them at start only when that is safe: each pending step is marked
`online` (it only adds tables, columns with defaults or indexes, so nodes still on the older code keep
working). The operators' commands apply nothing (`require_current`).

A database newer than the code is refused unless its steps since the code's version are all online: each
step records, beside the version, the oldest schema version whose code can still run on the store
(`compatible_from`: the version of the last step that is not online). So an older node keeps running, and
starting, on a store that a newer node or `db upgrade` moved by an additive step (a rolling upgrade), and
refuses one a breaking step moved. A store whose marker is missing (steps applied by a bridge before the
marker) is taken as compatible from its own version only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cloud_bridge.errors import SchemaError
from cloud_bridge.fleet_rules import STALE_AFTER_S

__all__ = ["Migration", "SchemaError", "compatible_from", "compatible_key", "latest", "pending", "require_current"]

logger = logging.getLogger(__name__)


def compatible_key(version: int) -> str:
    """The key of the marker the step to `version` wrote in the store's `meta` table. One per version: a version
    raised by anything but a step that wrote its marker (a marker left by an earlier step) is not trusted."""
    return f"schema {version} compatible from"


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: `statements` run in order in one transaction (on PostgreSQL, a step of CREATE INDEX
    statements only builds each one CONCURRENTLY, then records the step: store/pg_index.py)."""

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


def compatible_from(version: int, migrations: Sequence[Migration]) -> int:
    """The marker a store at `version` carries: the oldest schema version whose code can run on it (that of the
    last step up to `version` that is not online; 1 when every one is)."""
    return max((m.version for m in migrations[:version] if not m.online), default=1)


def pending(
    current: int,
    migrations: Sequence[Migration],
    *,
    at_start: bool,
    what: str,
    compatible: int | None = None,
    running: Callable[[], Sequence[str]] | None = None,
    marked: bool = True,
) -> list[Migration]:
    """The steps to apply from `current`; SchemaError when the database is newer than the code and not
    `compatible` with it (the store's marker, None when it has none), when (at start) a pending step is not
    online-safe and needs `cloud-bridge db upgrade`, or when (`db upgrade`) such a step is pending and
    `running()` names nodes that run on the store (None: the operator forces it). `marked`: whether the store's
    version carries its marker; one that does not was left by a bridge before the marker, whose running nodes
    fail on any step (`_check_unmarked`)."""
    known = latest(migrations)
    if current > known:
        _check_newer(current, known, compatible, what)
        return []
    steps = [m for m in migrations if m.version > current]
    if steps and not marked and running is not None:
        _check_unmarked(current, what, running, at_start=at_start)
    offline = [m for m in steps if not m.online]
    if at_start and offline:
        raise SchemaError(
            f"{what} needs schema step {offline[0].version} ({offline[0].summary}), which is not safe while other"
            " nodes run: stop them and run `cloud-bridge db upgrade`"
        )
    if offline and running is not None and (nodes := running()):
        raise SchemaError(
            f"{what} needs schema step {offline[0].version} ({offline[0].summary}), which is not safe while nodes"
            f" run, and {len(nodes)} run on it ({', '.join(nodes)}: a heartbeat in the last {STALE_AFTER_S:.0f} s):"
            " stop them first, or pass --force to apply it anyway (they then refuse the store at their next start)"
        )
    return steps


def _check_unmarked(current: int, what: str, running: Callable[[], Sequence[str]], *, at_start: bool) -> None:
    """SchemaError when nodes run on a store whose version carries no marker (a bridge before 5 Dec 2026 applied
    its steps): such a node builds its ledger rows from every column, and failed on every claim after an online
    step added one (`unexpected keyword argument 'cancel_ask'`), executing nothing, without a word."""
    if not (nodes := running()):
        return
    what_now = "stop them, then start this version" if at_start else "stop them first, or pass --force to apply it"
    raise SchemaError(
        f"{what} is at schema version {current}, left by a bridge before 5 Dec 2026, and {len(nodes)} run on it"
        f" ({', '.join(nodes)}: a heartbeat in the last {STALE_AFTER_S:.0f} s): a node of that bridge stops"
        f" executing after any schema step, an added column too; {what_now} (the first upgrade from such a bridge"
        " takes every node)"
    )


def require_current(current: int, migrations: Sequence[Migration], *, what: str, compatible: int | None = None) -> None:
    """SchemaError unless the database is at the code's version: for the operators' commands, which change no
    schema. They used to apply pending steps as a node does at start, and a `devices ls` of a newer
    cloud-bridge made the store newer than the nodes still running on it, which then refused to start again."""
    known = latest(migrations)
    if current > known:
        _check_newer(current, known, compatible, what)
        return
    if current < known:
        raise SchemaError(
            f"{what} has schema version {current}, older than this bridge's ({known}): an operator's command changes"
            " no schema (nodes of the older version would refuse the store after it); start a node of this version,"
            " which applies the steps, or run `cloud-bridge db upgrade`"
        )


def _check_newer(current: int, known: int, compatible: int | None, what: str) -> None:
    """Nothing when the steps that made the store newer than the code are all online (its marker is at most the
    code's version); else SchemaError."""
    if compatible is not None and compatible <= known:
        logger.info(
            "%s has schema version %d, newer than this bridge's (%d); its steps since are additive (compatible from"
            " %d), so this bridge runs on it",
            what, current, known, compatible,
        )  # fmt: skip
        return
    needs = "" if compatible is None else f" (it needs schema version {compatible} at least)"
    raise SchemaError(
        f"{what} has schema version {current}, newer than this bridge knows ({known}){needs}; upgrade the bridge"
    )
