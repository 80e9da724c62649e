"""The SQLite ledger's schema: its migrations, how they are applied to a file, and the audit table's insert.

Apart from `SqliteLedger` (which migrates its file as it opens it) because the store migrates the file
without opening a ledger (`Store.migrate`, `cloud-bridge db upgrade`) and the migration tests read the
steps. The version is SQLite's `user_version`; each step runs in its own transaction
(`cloud_bridge.store.migrations.pending` decides which steps are due).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from cloud_bridge import cancel_sql, intent_sql
from cloud_bridge.errors import TransientError
from cloud_bridge.fleet_rules import STALE_AFTER_S
from cloud_bridge.fleet_schema import FLEET_DB, FLEET_TABLES, SQLITE_NOW
from cloud_bridge.ledger import WAITING_INDEX
from cloud_bridge.store.migrations import Migration, compatible_from, compatible_key, latest, pending, require_current
from cloud_bridge.usage_sql import SCHEMA_SUMMARY as USAGE_SUMMARY
from cloud_bridge.usage_sql import SQLITE_SCHEMA as USAGE_SCHEMA
from intent_contract.sqlite_rows import ManyRows
from intent_contract.sqlite_wal import use_wal

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "intents and audit",
        (
            """CREATE TABLE IF NOT EXISTS intents (
    seq INTEGER PRIMARY KEY, device_id TEXT NOT NULL, intent_id TEXT NOT NULL, tenant TEXT NOT NULL,
    app TEXT NOT NULL, kind TEXT NOT NULL, payload BLOB NOT NULL, attempt INTEGER NOT NULL,
    priority INTEGER NOT NULL, created INTEGER NOT NULL, expires INTEGER, state TEXT NOT NULL,
    code TEXT NOT NULL, detail TEXT NOT NULL, tries INTEGER NOT NULL, next_run REAL NOT NULL,
    overrides BLOB NOT NULL, confirmed INTEGER NOT NULL, updated REAL NOT NULL,
    UNIQUE (device_id, intent_id))""",
            "CREATE INDEX IF NOT EXISTS intents_due ON intents (kind, priority DESC, seq) WHERE state = 'queued'",
            "CREATE INDEX IF NOT EXISTS intents_running ON intents (state) WHERE state = 'running'",
            "CREATE INDEX IF NOT EXISTS intents_unconfirmed ON intents (device_id, seq)"
            " WHERE confirmed = 0 AND state NOT IN ('queued', 'running')",
            "CREATE INDEX IF NOT EXISTS intents_purge ON intents (updated) WHERE confirmed = 1",
            """CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, at REAL NOT NULL, device_id TEXT NOT NULL, tenant TEXT NOT NULL,
    intent_id TEXT NOT NULL, kind TEXT NOT NULL, event TEXT NOT NULL, integration TEXT NOT NULL,
    code TEXT NOT NULL, detail TEXT NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS audit_at ON audit (at)",
            "CREATE INDEX IF NOT EXISTS audit_device ON audit (device_id, at)",
        ),
    ),
    Migration(
        2,
        "body digests, claim leases, limits in the store",
        (
            "ALTER TABLE intents ADD COLUMN digest TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE intents ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE intents ADD COLUMN lease_until REAL NOT NULL DEFAULT 0",
            "DROP INDEX IF EXISTS intents_running",
            "CREATE INDEX intents_lease ON intents (lease_until) WHERE state = 'running'",
            """CREATE TABLE limits (
    device_id TEXT NOT NULL, kind TEXT NOT NULL, tokens REAL, bucket_at REAL, quota_day INTEGER,
    quota_used INTEGER, PRIMARY KEY (device_id, kind))""",
        ),
    ),
    # On SQLite the fleet tables live in a file of their own (fleet_sql.sqlite_fleet says why); this step, the
    # fleet step on PostgreSQL, drops them here where a build before that made them, so the numbers stay equal.
    Migration(3, f"fleet tables: in {FLEET_DB}, not here", tuple(f"DROP TABLE IF EXISTS {t}" for t in FLEET_TABLES)),
    Migration(4, USAGE_SUMMARY, USAGE_SCHEMA),
    Migration(5, intent_sql.SQLITE_SCHEMA_SUMMARY, intent_sql.SQLITE_SCHEMA),
    Migration(6, "claims by tenant", (WAITING_INDEX,)),
    Migration(7, cancel_sql.SUMMARY, cancel_sql.SQLITE_SCHEMA),
)


# Where each step records the store's marker (store.migrations.compatible_from), outside the steps: a step of its
# own would be one an older bridge does not know.
_META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"

# The audit table's one insert: admission (ledger_sqlite_admit) and the ledger's other writes append rows.
_AUDIT_HEAD = "INSERT INTO audit (at, device_id, tenant, intent_id, kind, event, integration, code, detail)"
AUDIT_INSERT = f"{_AUDIT_HEAD} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
AUDIT_ROWS = ManyRows(_AUDIT_HEAD, "(?, ?, ?, ?, ?, ?, ?, ?, ?)")  # many audit rows, in as few statements as fit


def _schema_state(conn: sqlite3.Connection) -> tuple[int, int | None]:
    """The ledger's schema version, and its marker when it is newer than this code (None: no marker)."""
    current = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if current <= latest(MIGRATIONS):
        return current, None
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (compatible_key(current),)).fetchone()
    except sqlite3.OperationalError:  # no meta table: steps applied by a bridge before the marker
        return current, None
    return current, None if row is None else int(row[0])


def _pending(
    conn: sqlite3.Connection, *, at_start: bool, running: Callable[[], list[str]] | None = None
) -> list[Migration]:
    current, compatible = _schema_state(conn)
    return pending(
        current,
        MIGRATIONS,
        at_start=at_start,
        what="the SQLite ledger",
        compatible=compatible,
        running=running,
        marked=_marked(conn, current),
    )


def _marked(conn: sqlite3.Connection, current: int) -> bool:
    """Whether the ledger's version carries its marker (a new file's 0 does: nothing runs on it)."""
    if current == 0:
        return True
    try:
        return conn.execute("SELECT 1 FROM meta WHERE key = ?", (compatible_key(current),)).fetchone() is not None
    except sqlite3.OperationalError:  # no meta table: steps applied by a bridge before the marker
        return False


def running_nodes(path: Path) -> list[str]:
    """The nodes whose heartbeat in the fleet file beside the ledger at `path` is fresh (fleet_rules'
    rule), by the store's clock (heartbeats are written by it); none when there is no fleet file."""
    fleet = path.parent / FLEET_DB
    if not fleet.is_file():
        return []
    with closing(sqlite3.connect(fleet, isolation_level=None, timeout=10)) as conn:
        rows = conn.execute(
            f"SELECT node FROM fleet_nodes WHERE heartbeat_at >= {SQLITE_NOW} - ? ORDER BY node", (STALE_AFTER_S,)
        ).fetchall()
    return [str(r[0]) for r in rows]


def migrate(conn: sqlite3.Connection, *, at_start: bool, running: Callable[[], list[str]] | None = None) -> list[int]:
    """Apply pending migrations (each in its own transaction); returns the versions applied.

    The version is read again under the write lock before each step: processes opening one file together
    (a node starting beside a CLI command) each read it before, and the second one applied the step again
    (`duplicate column name: digest`). `running` (`db upgrade`, not forced) names the nodes running on the
    file, which a step that is not online refuses."""
    applied: list[int] = []
    if not _pending(conn, at_start=at_start, running=running):  # the usual case, without taking the write lock
        return applied
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            steps = _pending(conn, at_start=at_start, running=running)
            if steps:
                for statement in steps[0].statements:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {steps[0].version:d}")
                conn.execute(_META)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (compatible_key(steps[0].version), compatible_from(steps[0].version, MIGRATIONS)),
                )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if not steps:
            return applied
        applied.append(steps[0].version)


def migrate_file(path: Path, *, at_start: bool, force: bool = True) -> list[int]:
    """Migrate the ledger file at `path` (created if missing, with its directory); see `migrate`. Unless `force`,
    a step that is not online is refused while a node runs on the data directory."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path, isolation_level=None, timeout=10)) as conn:
            use_wal(conn)
            return migrate(conn, at_start=at_start, running=None if force else lambda: running_nodes(path))
    except (sqlite3.Error, OSError) as exc:
        raise TransientError(f"ledger {path}: {exc}", code="ledger_error") from exc


def check_file(path: Path) -> None:
    """SchemaError unless the ledger at `path` is at this code's version; it applies nothing (an operator's
    command: `store.migrations.require_current`)."""
    try:
        with closing(sqlite3.connect(path, isolation_level=None, timeout=10)) as conn:
            current, compatible = _schema_state(conn)
    except sqlite3.Error as exc:
        raise TransientError(f"ledger {path}: {exc}", code="ledger_error") from exc
    require_current(current, MIGRATIONS, what="the SQLite ledger", compatible=compatible)
