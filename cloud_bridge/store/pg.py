"""The PostgreSQL store: the schema, its migrations, connection pools and error mapping, and assembly.

Every bridge node connects to one database; all shared state lives there (ledger, audit, limits,
registry, enrollment codes, token replay cache). psycopg's exceptions are converted here, where they
enter: a database that is down or a conflict that aborted a transaction becomes TransientError (the
caller may retry; the edge resends what was not acked).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import psycopg

from cloud_bridge import cancel_sql, intent_sql
from cloud_bridge.fleet_rules import STALE_AFTER_S
from cloud_bridge.fleet_schema import PG_NOW, PG_SCHEMA, SCHEMA_SUMMARY
from cloud_bridge.ledger import WAITING_INDEX
from cloud_bridge.store import Store
from cloud_bridge.store.migrations import Migration, compatible_from, compatible_key, latest, pending, require_current
from cloud_bridge.store.pg_index import build, index_builds
from cloud_bridge.store.pg_pools import PgPools, converted, with_connect_timeout
from cloud_bridge.store.url import StoreUrl
from cloud_bridge.usage_sql import PG_SCHEMA as USAGE_SCHEMA
from cloud_bridge.usage_sql import SCHEMA_SUMMARY as USAGE_SUMMARY
from intent_contract.backoff import compute_backoff

logger = logging.getLogger(__name__)

# One lock id for schema changes, so that nodes starting together apply each step once.
_MIGRATION_LOCK = 0x6272_6964_6765  # "bridge"
# How long a schema step waits for a table's lock before it gives way and tries again later. A step waiting
# for a lock that a long transaction holds (a backup, a report) queues every later statement on the table
# behind it, so the running nodes stall for as long as it waits: at most this long, per try.
DDL_LOCK_TIMEOUT = 2.0
DDL_RETRY_CAP = 30.0  # the longest pause between tries
LOCK_POLL = 0.2  # how often a process waiting for another's schema steps asks for their lock again

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "ledger, audit, limits, registry, enrollment codes, token replay cache",
        (
            """CREATE TABLE intents (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, device_id text NOT NULL, intent_id text NOT NULL,
    tenant text NOT NULL, app text NOT NULL, kind text NOT NULL, payload bytea NOT NULL, attempt integer NOT NULL,
    priority integer NOT NULL, created bigint NOT NULL, expires bigint, state text NOT NULL, code text NOT NULL,
    detail text NOT NULL, tries integer NOT NULL, next_run double precision NOT NULL, overrides bytea NOT NULL,
    confirmed boolean NOT NULL, updated double precision NOT NULL, digest text NOT NULL DEFAULT '',
    owner text NOT NULL DEFAULT '', lease_until double precision NOT NULL DEFAULT 0,
    UNIQUE (device_id, intent_id))""",
            "CREATE INDEX intents_due ON intents (kind, priority DESC, seq) WHERE state = 'queued'",
            "CREATE INDEX intents_lease ON intents (lease_until) WHERE state = 'running'",
            "CREATE INDEX intents_unconfirmed ON intents (device_id, seq)"
            " WHERE NOT confirmed AND state NOT IN ('queued', 'running')",
            "CREATE INDEX intents_purge ON intents (updated) WHERE confirmed",
            """CREATE TABLE audit (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at double precision NOT NULL, device_id text NOT NULL,
    tenant text NOT NULL, intent_id text NOT NULL, kind text NOT NULL, event text NOT NULL,
    integration text NOT NULL, code text NOT NULL, detail text NOT NULL)""",
            "CREATE INDEX audit_at ON audit (at)",
            "CREATE INDEX audit_device ON audit (device_id, at)",
            """CREATE TABLE limits (
    device_id text NOT NULL, kind text NOT NULL, tokens double precision, bucket_at double precision,
    quota_day integer, quota_used integer, PRIMARY KEY (device_id, kind))""",
            """CREATE TABLE devices (
    device_id text PRIMARY KEY, tenant text NOT NULL, name text NOT NULL, public_key text NOT NULL,
    key_fingerprint text NOT NULL, enrolled_at double precision NOT NULL, revoked_at double precision)""",
            "CREATE INDEX devices_key ON devices (key_fingerprint)",
            """CREATE TABLE enroll_codes (
    code_hash text PRIMARY KEY, tenant text NOT NULL, name text NOT NULL, created_at double precision NOT NULL,
    expires_at double precision NOT NULL, used_at double precision, device_id text)""",
            "CREATE TABLE meta (key text PRIMARY KEY, value bigint NOT NULL)",
            "INSERT INTO meta (key, value) VALUES ('revocations', 0)",
            """CREATE TABLE token_replay (
    device_id text NOT NULL, jti text NOT NULL, until double precision NOT NULL, PRIMARY KEY (device_id, jti))""",
            "CREATE INDEX token_replay_until ON token_replay (until)",
        ),
    ),
    Migration(2, "device key rotation: a proposed next key", ("ALTER TABLE devices ADD COLUMN next_public_key text",)),
    Migration(3, SCHEMA_SUMMARY, PG_SCHEMA),
    Migration(4, USAGE_SUMMARY, USAGE_SCHEMA),
    Migration(5, intent_sql.PG_SCHEMA_SUMMARY, intent_sql.PG_SCHEMA),
    Migration(6, "claims by tenant", (WAITING_INDEX,)),
    Migration(
        7,
        "device keys replaced by a rotation",
        (
            """CREATE TABLE replaced_keys (
    device_id text NOT NULL, public_key text NOT NULL, replaced_at double precision NOT NULL)""",
            "CREATE INDEX replaced_keys_device ON replaced_keys (device_id, replaced_at)",
        ),
    ),
    Migration(8, cancel_sql.SUMMARY, cancel_sql.PG_SCHEMA),
)


def migrate(
    conninfo: str,
    *,
    at_start: bool,
    force: bool = False,
    lock_timeout: float = DDL_LOCK_TIMEOUT,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    rand: Callable[[], float] = random.random,
) -> list[int]:
    """Apply pending steps under a cluster-wide advisory lock; returns the versions applied. Unless `force`, a
    step that is not online is refused while nodes run on the store (their heartbeats in `fleet_nodes`): a
    node starting takes the same lock, so none starts between that look and the step.

    Each step waits at most `lock_timeout` seconds for the locks of its tables, then rolls back and tries
    again after a pause (backoff, up to DDL_RETRY_CAP), saying so in the log, until it gets them."""
    applied: list[int] = []
    waited = False
    with converted("PostgreSQL store migration"), psycopg.connect(conninfo, autocommit=True) as conn:
        # Asked again and again rather than waited for in one statement (pg_advisory_lock): a concurrent index
        # build under the lock (pg_index) waits for every statement under way, this one's too, and the two
        # processes deadlocked, failing one node's start.
        while not _locked(conn):
            if not waited:
                logger.info("waiting for another process applying schema steps to the PostgreSQL store")
            waited = True
            sleep(LOCK_POLL)
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
            current, compatible = _schema_state(conn)
            running = None if force else lambda: _running_nodes(conn)
            steps = pending(
                current,
                MIGRATIONS,
                at_start=at_start,
                what="the PostgreSQL store",
                compatible=compatible,
                running=running,
                marked=current == 0 or _has_marker(conn, current),
            )
            for step in steps:
                _apply(conn, step, lock_timeout=lock_timeout, clock=clock, sleep=sleep, rand=rand)
                applied.append(step.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
    return applied


def _locked(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_MIGRATION_LOCK,)).fetchone()
    return row is not None and bool(row[0])


def check(conninfo: str) -> None:
    """SchemaError unless the store's schema is at this code's version; it applies nothing (an operator's
    command: `store.migrations.require_current`)."""
    with converted("PostgreSQL store"), psycopg.connect(conninfo, autocommit=True) as conn:
        current, compatible = _schema_state(conn)
    require_current(current, MIGRATIONS, what="the PostgreSQL store", compatible=compatible)


def _schema_state(conn: psycopg.Connection[Any]) -> tuple[int, int | None]:
    """The store's schema version, and its marker when it is newer than this code (None: no marker)."""
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    current = int(row[0]) if row is not None else 0
    if current <= latest(MIGRATIONS):
        return current, None
    row = conn.execute("SELECT value FROM meta WHERE key = %s", (compatible_key(current),)).fetchone()
    return current, None if row is None else int(row[0])


def _has_marker(conn: psycopg.Connection[Any], version: int) -> bool:
    """Whether the step to `version` wrote its marker (a bridge before 5 Dec 2026 wrote none)."""
    return conn.execute("SELECT 1 FROM meta WHERE key = %s", (compatible_key(version),)).fetchone() is not None


def _running_nodes(conn: psycopg.Connection[Any]) -> list[str]:
    """The nodes whose heartbeat is fresh (fleet_rules.session_live's rule), by the store's clock (heartbeats are
    written by it)."""
    row = conn.execute("SELECT to_regclass('fleet_nodes') IS NOT NULL").fetchone()
    if row is None or not row[0]:  # a store from before the fleet tables: no node says it runs
        return []
    rows = conn.execute(
        f"SELECT node FROM fleet_nodes WHERE heartbeat_at >= {PG_NOW} - %s ORDER BY node", (STALE_AFTER_S,)
    ).fetchall()
    return [str(r[0]) for r in rows]


def made(conninfo: str) -> bool:
    """Whether the database holds a store (a schema step was applied); it changes nothing."""
    with converted("PostgreSQL store"), psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
        return row is not None and bool(row[0])


def _apply(
    conn: psycopg.Connection[Any],
    step: Migration,
    *,
    lock_timeout: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    rand: Callable[[], float],
) -> None:
    """One step in one transaction, tried until it gets its locks within `lock_timeout`. A step of indexes only is
    built CONCURRENTLY first, each index on its own (`pg_index`), and the transaction records the step."""
    statements = step.statements
    if (builds := index_builds(step)) is not None:
        for name, statement in builds:
            logger.info(
                "schema step %d (%s): building index %s concurrently (writes go on; it waits for transactions"
                " begun before it, a backup's included)",
                step.version, step.summary, name,
            )  # fmt: skip
            build(conn, name, statement)
        statements = ()
    started, tries = clock(), 0
    while True:
        tries += 1
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = {round(lock_timeout * 1000):d}")
                for statement in statements:
                    conn.execute(statement.encode())
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (step.version,))
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES (%s, %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (compatible_key(step.version), compatible_from(step.version, MIGRATIONS)),
                )
        except psycopg.errors.LockNotAvailable:
            pause = compute_backoff(tries, base=1.0, cap=DDL_RETRY_CAP, jitter=0.5 + rand() / 2)
            logger.warning(
                "schema step %d (%s) waits for a lock on its tables, which a long transaction holds: gave way"
                " after %.1f s (try %d, %.1f s in all), trying again in %.1f s",
                step.version, step.summary, lock_timeout, tries, clock() - started, pause,
            )  # fmt: skip
            sleep(pause)
            continue
        if tries > 1:
            logger.info(
                "schema step %d (%s) applied after waiting for its locks for %.1f s in all (%d tries)",
                step.version, step.summary, clock() - started, tries,
            )  # fmt: skip
        return


def open_pg_store(
    url: StoreUrl, *, node: str, tokens_per_device: int, timeout: float, clock: Callable[[], float] = time.time
) -> Store:
    """The PostgreSQL store of `url` for node `node`, not yet opened; `timeout` limits each use of a connection."""
    from cloud_bridge.fleet_sql import SqlFleet  # noqa: PLC0415
    from cloud_bridge.registry import revoked_in  # noqa: PLC0415
    from cloud_bridge.store.pg_ledger import PgLedger  # noqa: PLC0415 - these import this module
    from cloud_bridge.store.pg_registry import PgRegistry, PgReplayCache  # noqa: PLC0415
    from cloud_bridge.store.pg_signals import PgSignals, cancel_signal, operator_signal  # noqa: PLC0415

    # Every connection, the one-shot ones of schema checks and steps too (an operator's command makes one first),
    # gives up connecting after `timeout`: one to a database host that was down waited for ever.
    conninfo = with_connect_timeout(url.conninfo(application_name=f"cloud-bridge {node}"), timeout)
    pools = PgPools(conninfo, timeout=timeout)
    registry = PgRegistry(pools)
    return Store(
        url,
        PgLedger(pools, node=node, clock=clock),
        registry,
        PgReplayCache(pools, per_device=tokens_per_device),
        PgSignals(conninfo, node=node, timeout=timeout),
        lambda at_start: migrate(conninfo, at_start=at_start),
        # The registry closes the sync pool they share.
        SqlFleet(
            lambda: pools.sync_transaction("fleet tables"),
            marker="%s",
            on_open=pools.open_sync,
            now_sql=PG_NOW,
            clock=clock,
        ),
        intent_sql.SqlIntents(
            lambda: pools.sync_transaction("ledger"),
            signal=operator_signal(node),
            ask=cancel_signal,
            marker="%s",
            true="true",
            false="false",
            on_open=pools.open_sync,
            revoked=revoked_in(registry),
            now_sql=PG_NOW,
        ),
        lambda: made(conninfo),
        lambda: check(conninfo),
        lambda force: migrate(conninfo, at_start=False, force=force),
    )
