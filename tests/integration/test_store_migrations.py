"""Versioned schema migrations: `cloud-bridge db upgrade`, at-start upgrades, and refusals."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from cloud_bridge import ledger_sqlite_schema
from cloud_bridge.cli import main
from cloud_bridge.fleet_schema import FLEET_DB, migrate_fleet_file
from cloud_bridge.ledger_plan import DEFAULT_MAX_AGE
from cloud_bridge.ledger_sqlite import SqliteLedger
from cloud_bridge.ledger_sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS
from cloud_bridge.policy import Decision, DeviceRef
from cloud_bridge.store import open_store, pg
from cloud_bridge.store.migrations import Migration, SchemaError, pending
from cloud_bridge.store.pg import MIGRATIONS as PG_MIGRATIONS
from cloud_bridge.store.pg import migrate
from cloud_bridge.store.url import StoreUrl
from intent_contract.codec import AckState, Envelope
from tests.support.net import wait_until
from tests.support.stores import (
    admit,
    open_sqlite_stores_together,
    opened,
    pg_database,
    sqlite_data_dir_of_an_old_release,
    waiting_for_a_lock,
)

DEV = DeviceRef("dev-1", "acme", "boiler-7")


def upgrade(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["db", "upgrade", *args, "--json"])
    return result.exit_code, result.output


def test_offline_steps_are_applied_only_by_db_upgrade_and_newer_databases_are_refused() -> None:
    steps = (Migration(1, "base", ("x",)), Migration(2, "rewrite", ("y",), online=False))
    assert [m.version for m in pending(0, steps, at_start=False, what="db")] == [1, 2]
    with pytest.raises(SchemaError, match="cloud-bridge db upgrade"):
        pending(1, steps, at_start=True, what="db")
    assert pending(2, steps, at_start=True, what="db") == []
    with pytest.raises(SchemaError, match="newer than this bridge"):
        pending(3, steps, at_start=True, what="db")
    assert all(m.online for m in (*SQLITE_MIGRATIONS, *PG_MIGRATIONS))


async def test_a_sqlite_ledger_of_the_previous_version_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    conn = sqlite3.connect(path)
    for statement in SQLITE_MIGRATIONS[0].statements:  # the schema as the previous release left it
        conn.execute(statement)
    conn.execute(
        "INSERT INTO intents (device_id, intent_id, tenant, app, kind, payload, attempt, priority, created, expires,"
        " state, code, detail, tries, next_run, overrides, confirmed, updated)"
        " VALUES ('dev-1', 'old-1', 'acme', 'app', 'email.send', x'80', 1, 0, 0, NULL, 'delivered', '', '', 1, 0,"
        " x'80', 0, 1.0)"
    )
    conn.commit()
    conn.close()
    ledger = SqliteLedger(path)
    await ledger.open()
    try:
        assert [a.id for a in await ledger.unconfirmed("dev-1")] == ["old-1"]
        # A row from before digests were kept is never an id conflict: its resend is a duplicate.
        now = time.time()
        again = Envelope("old-1", "app", "email.send", int(now * 1000), None, 1, {"other": "body"})
        [ack] = await admit(ledger, DEV, [again], lambda _e: Decision(True), now, max_age=DEFAULT_MAX_AGE)
        assert ack.state is AckState.DELIVERED
    finally:
        await ledger.close()
    version = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]
    assert version == len(SQLITE_MIGRATIONS)


def test_processes_opening_one_sqlite_data_dir_together_apply_each_step_once(tmp_path: Path) -> None:
    """A node starting beside CLI commands: 8 processes open one data dir at the same moment, 20 dirs of an
    older release and 20 new ones; each step is applied once and no opening fails. Each process read the
    ledger's version (and the registry its columns) before taking the write lock, and the later ones failed:
    `duplicate column name: digest` (`next_public_key`); a new file's change to WAL failed as `locked`."""
    old = [sqlite_data_dir_of_an_old_release(tmp_path / f"old{n}") for n in range(20)]
    directories = [*old, *(tmp_path / f"new{n}" for n in range(20))]
    lines = open_sqlite_stores_together(directories, processes=8)
    assert [line for line in lines if line != "ok"] == []
    for directory in directories:
        with closing(sqlite3.connect(directory / "ledger.db")) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == len(SQLITE_MIGRATIONS)
        with closing(sqlite3.connect(directory / "registry.db")) as conn:
            assert "next_public_key" in {r[1] for r in conn.execute("PRAGMA table_info(devices)")}


def test_db_upgrade_on_sqlite(tmp_path: Path) -> None:
    code, output = upgrade("--data-dir", str(tmp_path))
    assert code == 0, output
    assert json.loads(output)["applied"] == [m.version for m in SQLITE_MIGRATIONS]
    assert json.loads(upgrade("--data-dir", str(tmp_path))[1])["applied"] == []


async def test_db_upgrade_on_postgresql_then_nodes_start_and_a_newer_schema_is_refused() -> None:
    with pg_database() as url:
        code, output = upgrade("--store", str(url))
        assert code == 0, output
        assert json.loads(output) == {"store": str(url), "applied": [m.version for m in PG_MIGRATIONS]}
        assert json.loads(upgrade("--store", str(url))[1])["applied"] == []
        async with opened(url, node="node-a") as a, opened(url, node="node-b") as b:
            await admit(a.ledger, DEV, [Envelope("i", "app", "email.send", int(time.time() * 1000), None, 1, {})],
                        lambda _e: Decision(True), time.time())  # fmt: skip
            assert len(await b.ledger.audit()) == 1
        with psycopg.connect(url.conninfo(), autocommit=True) as conn:
            conn.execute("INSERT INTO schema_version (version) VALUES (99)")
        code, output = upgrade("--store", str(url))
        assert code == 1
        assert "schema version 99, newer than this bridge" in output
        assert "Traceback" not in output


async def test_nodes_starting_together_on_an_empty_database_apply_the_schema_once() -> None:
    with pg_database() as url:

        async def start(node: str) -> StoreUrl:
            async with opened(url, node=node):
                return url

        await asyncio.gather(*(start(f"node-{n}") for n in range(3)))
        with psycopg.connect(url.conninfo()) as conn:
            versions = [row[0] for row in conn.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == [m.version for m in PG_MIGRATIONS]


def test_a_schema_step_waiting_behind_a_long_read_stalls_the_running_nodes_at_most_its_lock_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A node starts on a database one step behind (step 5: ALTER TABLE intents) while a long read of
    `intents` is open (a backup). Its ALTER waits for the read, and PostgreSQL queues every later statement
    on the table behind it: the running nodes' statements went through only when the read ended. Now the
    step gives way after DDL_LOCK_TIMEOUT (2 s), logs that it waits, and tries again until the read ends."""
    caplog.set_level(logging.INFO, logger="cloud_bridge.store.pg")
    with pg_database() as url:
        conninfo = url.conninfo()
        migrate(conninfo, at_start=False)
        with psycopg.connect(conninfo, autocommit=True) as conn:  # back to step 4, as a release before step 5 left it
            for statement in (
                "DROP INDEX intents_tenant_due",
                "DROP INDEX intents_announce",
                "ALTER TABLE intents DROP COLUMN announce",
                "DROP TABLE replaced_keys",  # step 7
                "ALTER TABLE intents DROP COLUMN cancel_ask",  # step 8
                "DELETE FROM schema_version WHERE version >= 5",
            ):
                conn.execute(statement.encode())
        applied: list[list[int]] = []
        with psycopg.connect(conninfo) as backup, psycopg.connect(conninfo, autocommit=True) as running:
            backup.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            backup.execute("SELECT count(*) FROM intents")  # holds its lock on intents until it ends
            starting = threading.Thread(target=lambda: applied.append(migrate(conninfo, at_start=True)))
            starting.start()
            try:
                wait_until(lambda: waiting_for_a_lock(url, "ALTER TABLE intents"), what="the step waiting for the lock")
                running.execute("SET statement_timeout = 10000")  # the read lasts until the test ends it
                began = time.monotonic()
                running.execute("SELECT count(*) FROM intents WHERE state = 'queued'")  # what a node does all the time
                assert time.monotonic() - began < 5  # a few seconds at most, however long the read lasts
                wait_until(lambda: "waits for a lock" in caplog.text, what="the starting node saying it waits")
            finally:
                backup.rollback()  # the backup ends
                starting.join(60)
        assert applied == [[m.version for m in PG_MIGRATIONS[4:]]]
        assert "schema step 5 (operator retry and cancel: statuses to announce) waits for a lock" in caplog.text
        assert "applied after waiting for its locks for" in caplog.text


OPERATORS_COMMANDS = (
    ("devices", "ls"),
    ("devices", "show", "dev-1"),
    ("devices", "revoke", "dev-1"),
    ("devices", "enroll-code", "--tenant", "acme", "--name", "boiler-8"),
    ("intents", "ls"),
    ("status",),
    ("audit",),
    ("usage",),
    ("receipt", "dev-1", "--out", "/nonexistent/receipt"),
)


def test_operators_commands_of_a_newer_bridge_leave_a_postgresql_schema_to_the_nodes() -> None:
    """An operator's newer cloud-bridge against a store its nodes run on at the version before (steps 7-8 not applied).
    Each command applied the pending steps, as a node does at start: `devices ls` made the store newer than
    the running nodes' code, and each of them refused it at its next start ("newer than this bridge knows").
    Now each says the store is older and how to upgrade it, and the schema stays as the nodes know it."""
    with pg_database() as url:
        code, output = upgrade("--store", str(url))
        assert code == 0, output
        with psycopg.connect(url.conninfo(), autocommit=True) as conn:  # as the release before step 7 left it
            conn.execute("DROP TABLE replaced_keys")
            conn.execute("ALTER TABLE intents DROP COLUMN cancel_ask")  # step 8
            conn.execute("DELETE FROM schema_version WHERE version >= 7")
        for command in OPERATORS_COMMANDS:
            result = CliRunner().invoke(main, [*command, "--store", str(url)])
            assert result.exit_code == 1, (command, result.output)
            assert "the PostgreSQL store has schema version 6, older than this bridge's (8)" in result.output, command
            assert "cloud-bridge db upgrade" in result.output
            assert "Traceback" not in result.output
            with psycopg.connect(url.conninfo()) as conn:
                assert conn.execute("SELECT max(version) FROM schema_version").fetchone() == (6,), command
        assert json.loads(upgrade("--store", str(url))[1])["applied"] == [7, 8]
        result = CliRunner().invoke(main, ["devices", "ls", "--store", str(url)])
        assert result.exit_code == 0, result.output


def test_operators_commands_of_a_newer_bridge_leave_a_sqlite_schema_to_the_node(tmp_path: Path) -> None:
    """The same on SQLite, beside an older node on its data directory: the ledger stays at its version."""
    data_dir = sqlite_data_dir_of_an_old_release(tmp_path / "data")
    for command in OPERATORS_COMMANDS:
        result = CliRunner().invoke(main, [*command, "--data-dir", str(data_dir)])
        assert result.exit_code == 1, (command, result.output)
        assert f"the SQLite ledger has schema version 1, older than this bridge's ({len(SQLITE_MIGRATIONS)})" in (
            result.output
        ), command
        with closing(sqlite3.connect(data_dir / "ledger.db")) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 1, command
    code, output = upgrade("--data-dir", str(data_dir))
    assert code == 0, output
    result = CliRunner().invoke(main, ["devices", "enroll-code", "--tenant", "acme", "--name", "n", "--data-dir",
                                       str(data_dir)])  # fmt: skip
    assert result.exit_code == 0, result.output


def test_an_operators_command_still_makes_a_new_store_where_it_makes_one(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["devices", "enroll-code", "--tenant", "acme", "--name", "n", "--data-dir",
                                       str(tmp_path / "new")])  # fmt: skip
    assert result.exit_code == 0, result.output
    with closing(sqlite3.connect(tmp_path / "new" / "ledger.db")) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(SQLITE_MIGRATIONS)


async def test_a_sqlite_fleet_file_of_a_newer_bridge_is_refused(tmp_path: Path) -> None:
    """fleet.db has a version of its own (the ledger's does not cover it): a file a newer bridge left at 2 was
    taken as this bridge's, by a node's start and by `devices ls`, and written with this one's statements."""
    code, output = upgrade("--data-dir", str(tmp_path))
    assert code == 0, output
    migrate_fleet_file(tmp_path / FLEET_DB)
    with closing(sqlite3.connect(tmp_path / FLEET_DB)) as conn:
        conn.execute("PRAGMA user_version = 2")
    result = CliRunner().invoke(main, ["devices", "ls", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "have schema version 2, newer than this bridge knows (1); upgrade the bridge" in result.output
    store = open_store(StoreUrl.sqlite(tmp_path), node="node-a")
    with pytest.raises(SchemaError, match="newer than this bridge knows"):
        await store.open()  # a node's start
    await store.close()
    with closing(sqlite3.connect(tmp_path / FLEET_DB)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2


def newer(migrations: tuple[Migration, ...]) -> tuple[Migration, Migration]:
    """The steps a newer bridge would add: one additive (a table the older code never reads), then one that is not
    safe for the older code."""
    n = len(migrations)
    return (
        Migration(n + 1, "a table of the newer bridge", ("CREATE TABLE later_things (x integer)",)),
        Migration(n + 2, "a rewrite", ("ALTER TABLE later_things RENAME TO renamed_things",), online=False),
    )


async def test_an_older_node_runs_on_a_postgresql_store_an_additive_step_moved_and_refuses_a_breaking_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rolling upgrade: a node of the next version starts beside the running ones and applies its additive step.
    The older nodes refused the store at their next start or check (`newer than this bridge knows`), so one
    newer node locked every older one out before they were upgraded. Each step now records the oldest version
    that can run on the store: an older node keeps running on an additive step, and refuses a breaking one."""
    additive, breaking = newer(PG_MIGRATIONS)
    with pg_database() as url:
        async with opened(url, node="old-1") as old:
            monkeypatch.setattr(pg, "MIGRATIONS", (*PG_MIGRATIONS, additive))
            assert migrate(url.conninfo(), at_start=True) == [additive.version]  # the newer node starts
            monkeypatch.undo()
            old.check_schema()  # the older node's check, as an operator's command of its version
            async with opened(url, node="old-2"):  # an older node (re)starts
                pass
            result = CliRunner().invoke(main, ["devices", "ls", "--store", str(url)])
            assert result.exit_code == 0, result.output
            monkeypatch.setattr(pg, "MIGRATIONS", (*PG_MIGRATIONS, additive, breaking))
            assert migrate(url.conninfo(), at_start=False) == [breaking.version]  # `db upgrade` of a newer bridge
            monkeypatch.undo()
            wanted = (
                f"the PostgreSQL store has schema version {breaking.version}, newer than this bridge knows"
                f" ({len(PG_MIGRATIONS)}) (it needs schema version {breaking.version} at least); upgrade the bridge"
            )
            with pytest.raises(SchemaError) as refused:
                old.check_schema()
            assert str(refused.value) == wanted
            store = open_store(url, node="old-3")
            with pytest.raises(SchemaError):
                await store.open()


async def test_an_older_bridge_runs_on_a_sqlite_ledger_an_additive_step_moved_and_refuses_a_breaking_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on SQLite: a newer bridge run on a data directory, then the older one again (a rollback)."""
    additive, breaking = newer(SQLITE_MIGRATIONS)
    url = StoreUrl.sqlite(tmp_path)
    monkeypatch.setattr(ledger_sqlite_schema, "MIGRATIONS", (*SQLITE_MIGRATIONS, additive))
    async with opened(url, node="newer"):
        pass
    monkeypatch.undo()
    async with opened(url, node="older") as old:
        old.check_schema()
    monkeypatch.setattr(ledger_sqlite_schema, "MIGRATIONS", (*SQLITE_MIGRATIONS, additive, breaking))
    code, output = upgrade("--data-dir", str(tmp_path))
    assert code == 0, output
    assert json.loads(output)["applied"] == [breaking.version]
    monkeypatch.undo()
    store = open_store(url, node="older")
    with pytest.raises(SchemaError, match=f"it needs schema version {breaking.version} at least"):
        await store.open()
    await store.close()


async def test_a_sqlite_registry_of_a_newer_bridge_is_refused(tmp_path: Path) -> None:
    """registry.db had no version (the ledger's does not cover it): a file a newer bridge left was taken as this
    bridge's, by a node's start and by `devices ls`, and written with this one's statements."""
    code, output = upgrade("--data-dir", str(tmp_path))
    assert code == 0, output
    with closing(sqlite3.connect(tmp_path / "registry.db")) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        conn.execute("PRAGMA user_version = 2")
    result = CliRunner().invoke(main, ["devices", "ls", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    wanted = f"the SQLite device registry ({tmp_path / 'registry.db'}) has schema version 2, newer than this bridge"
    assert f"{wanted} knows (1); upgrade the bridge" in result.output
    store = open_store(StoreUrl.sqlite(tmp_path), node="node-a")
    with pytest.raises(SchemaError, match=r"device registry .* newer than this bridge knows"):
        await store.open()  # a node's start
    await store.close()
    with closing(sqlite3.connect(tmp_path / "registry.db")) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2


def test_this_bridges_audit_reads_a_sqlite_ledger_a_newer_bridge_added_columns_to(tmp_path: Path) -> None:
    """A newer bridge's additive step (a column with a default, online: this bridge keeps running on the store)
    added a column to `audit` and `intents`: this bridge's `cloud-bridge audit` on SQLite read `SELECT *` and
    made each record of every column, and ended in a traceback (`unexpected keyword argument`)."""
    code, output = upgrade("--data-dir", str(tmp_path))
    assert code == 0, output
    with closing(sqlite3.connect(tmp_path / "ledger.db", isolation_level=None)) as conn:
        n = len(SQLITE_MIGRATIONS) + 1
        for table in ("audit", "intents"):  # as that step of the newer bridge, and its marker
            conn.execute(f"ALTER TABLE {table} ADD COLUMN later_note TEXT NOT NULL DEFAULT ''")
        conn.execute(f"PRAGMA user_version = {n}")
        conn.execute("INSERT INTO meta (key, value) VALUES (?, 1)", (f"schema {n} compatible from",))
        conn.execute(
            "INSERT INTO audit (at, device_id, tenant, intent_id, kind, event, integration, code, detail, later_note)"
            " VALUES (1.0, 'dev-1', 'acme', 'i-1', 'email.send', 'accept', '', '', '', 'of the newer bridge')"
        )

    result = CliRunner().invoke(main, ["audit", "--device", "dev-1", "--json", "--data-dir", str(tmp_path)])

    assert result.exit_code == 0, result.output
    [record] = json.loads(result.output)
    assert (record["intent_id"], record["event"]) == ("i-1", "accept")
