"""The fleet tables' schema, one text for SQLite and PostgreSQL (their steps differ only in types), and the
SQLite fleet file (`FLEET_DB`, beside the ledger: `fleet_sql.sqlite_fleet` says why it is a file of its own).
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from cloud_bridge.errors import SchemaError, TransientError
from intent_contract.sqlite_wal import use_wal


def _schema(real: str, integer: str, seq: str) -> tuple[str, ...]:
    return (
        f"""CREATE TABLE fleet_devices (
    device_id TEXT PRIMARY KEY, node TEXT NOT NULL DEFAULT '', connected_at {real}, seen_at {real},
    address TEXT NOT NULL DEFAULT '', report TEXT, report_at {real}, offset_ms {integer},
    refused_code TEXT NOT NULL DEFAULT '', refused_at {real})""",
        f"""CREATE TABLE fleet_history (
    seq {seq}, device_id TEXT NOT NULL, at {real} NOT NULL, offset_ms {integer} NOT NULL, report TEXT NOT NULL)""",
        "CREATE INDEX fleet_history_device ON fleet_history (device_id, seq)",
        "CREATE INDEX fleet_history_at ON fleet_history (at)",
        f"""CREATE TABLE fleet_telemetry (
    device_id TEXT NOT NULL, hour {integer} NOT NULL, auth_failures {integer} NOT NULL DEFAULT 0,
    connects {integer} NOT NULL DEFAULT 0, intents {integer} NOT NULL DEFAULT 0, PRIMARY KEY (device_id, hour))""",
        "CREATE INDEX fleet_telemetry_hour ON fleet_telemetry (hour)",
        f"""CREATE TABLE fleet_addresses (
    device_id TEXT NOT NULL, address TEXT NOT NULL, first_seen {real} NOT NULL, last_seen {real} NOT NULL,
    connects {integer} NOT NULL DEFAULT 0, refused {integer} NOT NULL DEFAULT 0, PRIMARY KEY (device_id, address))""",
        "CREATE INDEX fleet_addresses_seen ON fleet_addresses (last_seen)",
        f"CREATE TABLE fleet_nodes (node TEXT PRIMARY KEY, heartbeat_at {real} NOT NULL)",
        f"""CREATE TABLE fleet_requests (
    request_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, asked_at {real} NOT NULL, state TEXT NOT NULL,
    node TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '', answered_at {real}, answer TEXT)""",
        "CREATE INDEX fleet_requests_pending ON fleet_requests (asked_at) WHERE state = 'pending'",
        "CREATE INDEX fleet_requests_asked ON fleet_requests (asked_at)",
    )


# The schema step of each backend (ledger_sqlite_schema.MIGRATIONS and store.pg.MIGRATIONS hold them).
SQLITE_SCHEMA = _schema("REAL", "INTEGER", "INTEGER PRIMARY KEY")
PG_SCHEMA = _schema("double precision", "bigint", "bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
SCHEMA_SUMMARY = "fleet health: device states, report history, connect telemetry, diagnose requests"


FLEET_DB = "fleet.db"
FLEET_TABLES = ("fleet_devices", "fleet_history", "fleet_telemetry", "fleet_addresses", "fleet_nodes", "fleet_requests")


FLEET_VERSION = 1  # the SQLite fleet file's user_version: its one step, SQLITE_SCHEMA


def migrate_fleet_file(path: Path) -> list[int]:
    """Create the SQLite fleet file and its tables if missing (WAL: readers never hold up the desk's writes);
    SchemaError for a file a newer bridge made (it was taken as this one's, as the ledger's is not)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=10)) as conn:
            if (found := int(conn.execute("PRAGMA user_version").fetchone()[0])) > FLEET_VERSION:
                raise SchemaError(
                    f"the SQLite fleet tables ({path}) have schema version {found}, newer than this bridge knows"
                    f" ({FLEET_VERSION}); upgrade the bridge"
                )
            use_wal(conn)
            if found >= 1:
                return []
            conn.execute("BEGIN IMMEDIATE")
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) >= 1:  # another process made them meanwhile
                conn.execute("ROLLBACK")
                return []
            for statement in SQLITE_SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {FLEET_VERSION:d}")
            conn.execute("COMMIT")
            return [1]
    except (sqlite3.Error, OSError) as exc:
        raise TransientError(f"fleet tables in {path}: {exc}", code="store_error") from exc


# The store's own clock (seconds since the epoch), in SQL: node heartbeats are written and judged by it
# (fleet_sql; `db upgrade`'s check of running nodes).
SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
PG_NOW = "extract(epoch from clock_timestamp())::float8"
