"""Schema steps beside running nodes: `cloud-bridge db upgrade` refuses a step that is not safe while they run
unless forced; a step of indexes lets their writes through while it builds."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from click.testing import CliRunner

from cloud_bridge import ledger_sqlite_schema
from cloud_bridge.cli import main
from cloud_bridge.fleet_schema import FLEET_DB, PG_NOW, SQLITE_NOW, migrate_fleet_file
from cloud_bridge.ledger_sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS
from cloud_bridge.store import pg
from cloud_bridge.store.migrations import Migration, SchemaError
from cloud_bridge.store.pg import MIGRATIONS as PG_MIGRATIONS
from cloud_bridge.store.url import StoreUrl
from tests.support.bridge import CountingIntegration, node, until
from tests.support.net import wait_until
from tests.support.stores import pg_url, waiting_for_a_lock

__all__ = ["pg_url"]  # fixtures


def upgrade(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["db", "upgrade", *args, "--json"])
    return result.exit_code, result.output


def breaking(migrations: tuple[Migration, ...]) -> tuple[Migration, ...]:
    """The steps of a newer bridge whose one new step is not safe while nodes run."""
    step = Migration(len(migrations) + 1, "a rewrite", ("CREATE TABLE later_things (x integer)",), online=False)
    return (*migrations, step)


def pg_version(url: StoreUrl) -> int:
    with psycopg.connect(url.conninfo()) as conn:
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row is not None else 0


def pg_heartbeats(url: StoreUrl) -> list[str]:
    with psycopg.connect(url.conninfo()) as conn:
        return [str(r[0]) for r in conn.execute("SELECT node FROM fleet_nodes").fetchall()]


async def test_db_upgrade_refuses_a_breaking_step_while_a_node_runs_on_postgresql(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`db upgrade` applied a step that is not online under a running node, which then failed on the schema it
    no longer knew and refused the store at its next start; nothing said nodes were running. Now it names them
    and applies nothing, unless --force."""
    async with node(tmp_path, server_cert_files, pg_url, "bridge-1", CountingIntegration()):
        await until(lambda: "bridge-1" in pg_heartbeats(pg_url), what="the node's heartbeat")
        monkeypatch.setattr(pg, "MIGRATIONS", breaking(PG_MIGRATIONS))
        code, output = upgrade("--store", str(pg_url))
        assert code == 1, output
        assert (
            f"needs schema step {len(PG_MIGRATIONS) + 1} (a rewrite), which is not safe while nodes run, and 1 run on"
            " it (bridge-1: a heartbeat in the last 20 s): stop them first, or pass --force" in output
        )
        assert "Traceback" not in output
        assert pg_version(pg_url) == len(PG_MIGRATIONS)
        code, output = upgrade("--store", str(pg_url), "--force")
        assert code == 0, output
        assert json.loads(output)["applied"] == [len(PG_MIGRATIONS) + 1]


async def test_db_upgrade_refuses_a_breaking_step_while_the_node_runs_on_sqlite(
    tmp_path: Path, server_cert_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on a SQLite data directory (its node's heartbeat is in fleet.db); once the node stops, the step
    is applied without --force."""
    data_dir = tmp_path / "bridge-1" / "data"
    url = StoreUrl.sqlite(data_dir)

    def heartbeats() -> list[str]:
        with closing(sqlite3.connect(data_dir / FLEET_DB)) as conn:
            return [str(r[0]) for r in conn.execute("SELECT node FROM fleet_nodes").fetchall()]

    async with node(tmp_path, server_cert_files, url, "bridge-1", CountingIntegration()):
        await until(lambda: "bridge-1" in heartbeats(), what="the node's heartbeat")
        monkeypatch.setattr(ledger_sqlite_schema, "MIGRATIONS", breaking(SQLITE_MIGRATIONS))
        code, output = upgrade("--data-dir", str(data_dir))
        assert code == 1, output
        assert "1 run on it (bridge-1: a heartbeat in the last 20 s): stop them first, or pass --force" in output
        with closing(sqlite3.connect(data_dir / "ledger.db")) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == len(SQLITE_MIGRATIONS)
    code, output = upgrade("--data-dir", str(data_dir))
    assert code == 0, output
    assert json.loads(output)["applied"] == [len(SQLITE_MIGRATIONS) + 1]


def at_step_5(url: StoreUrl) -> None:
    """A store as a release before step 6 (an index on intents) left it, with two intents."""
    pg.migrate(url.conninfo(), at_start=False)
    with psycopg.connect(url.conninfo(), autocommit=True) as conn:
        for statement in (
            "DROP INDEX intents_tenant_due",  # step 6
            "DROP TABLE replaced_keys",  # step 7
            "ALTER TABLE intents DROP COLUMN cancel_ask",  # step 8
            "DELETE FROM schema_version WHERE version >= 6",
            "INSERT INTO intents (device_id, intent_id, tenant, app, kind, payload, attempt, priority, created, state,"
            " code, detail, tries, next_run, overrides, confirmed, updated) SELECT 'dev-1', 'i-' || n, 'acme', 'app',"
            " 'email.send', '\\x80', 1, 0, 0, 'queued', '', '', 0, 0, '\\x80', false, 0 FROM generate_series(1, 2) n",
        ):
            conn.execute(statement.encode())


def tenant_due_index(url: StoreUrl) -> tuple[bool, str]:
    with psycopg.connect(url.conninfo()) as conn:
        row = conn.execute(
            "SELECT i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i"
            " WHERE i.indexrelid = to_regclass('intents_tenant_due')"
        ).fetchone()
    assert row is not None
    return bool(row[0]), str(row[1])


def test_an_index_step_lets_the_running_nodes_write_while_it_waits_and_builds(pg_url: StoreUrl) -> None:
    """Step 6 (an index on intents) is applied at a node's start while another node's write transaction is under
    way. A plain CREATE INDEX in the step's transaction waits for that write, and every later write on intents
    queued behind it: the running nodes could not write for as long as it waited, then for the whole build. Built
    CONCURRENTLY it waits without holding up a write."""
    at_step_5(pg_url)
    conninfo = pg_url.conninfo()
    applied: list[list[int]] = []
    with psycopg.connect(conninfo) as under_way, psycopg.connect(conninfo) as writer:
        under_way.execute("LOCK TABLE intents IN ROW EXCLUSIVE MODE")  # a node's write transaction, not yet ended
        starting = threading.Thread(target=lambda: applied.append(pg.migrate(conninfo, at_start=True)))
        starting.start()
        try:
            wait_until(lambda: waiting_for_a_lock(pg_url, "CREATE INDEX"), what="the index step waiting")
            writer.execute("LOCK TABLE intents IN ROW EXCLUSIVE MODE NOWAIT")  # a running node's write: not held up
            writer.execute("UPDATE intents SET updated = 1 WHERE intent_id = 'i-1'")
            writer.commit()
        finally:
            under_way.rollback()
            starting.join(60)
    assert applied == [[6, 7, 8]]
    assert tenant_due_index(pg_url) == (
        True,
        "CREATE INDEX intents_tenant_due ON public.intents USING btree (kind, tenant, priority DESC, seq)"
        " WHERE (state = 'queued'::text)",
    )


def test_an_index_an_interrupted_build_left_invalid_is_built_again(pg_url: StoreUrl) -> None:
    """A concurrent build that fails or is interrupted leaves its index INVALID (here a unique build over two equal
    rows); the step drops it and builds it again, rather than keep it (IF NOT EXISTS) or fail on the name."""
    at_step_5(pg_url)
    with psycopg.connect(pg_url.conninfo(), autocommit=True) as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("CREATE UNIQUE INDEX CONCURRENTLY intents_tenant_due ON intents (kind)")
    assert tenant_due_index(pg_url)[0] is False
    assert pg.migrate(pg_url.conninfo(), at_start=True) == [6, 7, 8]
    valid, definition = tenant_due_index(pg_url)
    assert valid
    assert definition.startswith("CREATE INDEX intents_tenant_due ON public.intents USING btree (kind, tenant")


async def test_db_upgrade_on_a_machine_whose_clock_is_ahead_still_sees_the_running_node(
    tmp_path: Path, server_cert_files: dict[str, Path], pg_url: StoreUrl, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Heartbeats are written in the store's time (fleet view); `db upgrade` judged them by the operator machine's
    clock, so from a machine a minute ahead every running node looked stopped and the breaking step was applied."""
    async with node(tmp_path, server_cert_files, pg_url, "bridge-1", CountingIntegration()):
        await until(lambda: "bridge-1" in pg_heartbeats(pg_url), what="the node's heartbeat")
        # The operator's machine a minute ahead, for the store module's reading of the clock only (the node's too
        # would move its heartbeat's age, which the store's clock now writes)
        ahead = SimpleNamespace(time=lambda: time.time() + 60, monotonic=time.monotonic, sleep=time.sleep)
        monkeypatch.setattr(pg, "time", ahead, raising=False)
        monkeypatch.setattr(pg, "MIGRATIONS", breaking(PG_MIGRATIONS))
        code, output = upgrade("--store", str(pg_url))
        assert code == 1, output
        assert "1 run on it (bridge-1: a heartbeat in the last 20 s)" in output
        assert pg_version(pg_url) == len(PG_MIGRATIONS)


OLD_BRIDGE_LEDGER = Path(__file__).parent.parent / "data" / "bridge-2026-12-02" / "ledger.db"


def test_db_upgrade_refuses_any_step_under_a_running_node_of_a_bridge_before_the_marker_on_sqlite(
    tmp_path: Path,
) -> None:
    """A bridge before 5 Dec 2026 builds its ledger rows from every column: after `db upgrade` of this version
    applied its online step 7 (a column) under it, it failed on every claim (`unexpected keyword argument
    'cancel_ask'`) and executed nothing, while `db upgrade` had said only "applied schema steps 7". Its ledger
    (recorded: version 6, no marker) with its node's heartbeat fresh is now refused; once the node stopped (its
    heartbeat gone), upgraded."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copyfile(OLD_BRIDGE_LEDGER, data_dir / "ledger.db")
    migrate_fleet_file(data_dir / FLEET_DB)
    with closing(sqlite3.connect(data_dir / FLEET_DB, isolation_level=None)) as conn:
        conn.execute(f"INSERT INTO fleet_nodes (node, heartbeat_at) VALUES ('bridge-old', {SQLITE_NOW})")

    code, output = upgrade("--data-dir", str(data_dir))

    assert code == 1, output
    assert (
        "the SQLite ledger is at schema version 6, left by a bridge before 5 Dec 2026, and 1 run on it (bridge-old:"
        " a heartbeat in the last 20 s)" in output
    )
    assert "stop them first, or pass --force" in output and "Traceback" not in output
    with closing(sqlite3.connect(data_dir / "ledger.db")) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 6
        assert "cancel_ask" not in {r[1] for r in conn.execute("PRAGMA table_info(intents)")}
    with closing(sqlite3.connect(data_dir / FLEET_DB, isolation_level=None)) as conn:
        conn.execute("DELETE FROM fleet_nodes")  # the node stopped (as it says at its stop)
    code, output = upgrade("--data-dir", str(data_dir))
    assert code == 0, output
    assert json.loads(output)["applied"] == [m.version for m in SQLITE_MIGRATIONS[6:]]


def test_a_node_does_not_start_beside_running_nodes_of_a_bridge_before_the_marker_on_postgresql(
    pg_url: StoreUrl,
) -> None:
    """On PostgreSQL a node of this version starting beside nodes of a bridge before 5 Dec 2026 applied its online
    steps at start, and those nodes stopped executing (as on SQLite). Now it refuses to start while they run."""
    pg.migrate(pg_url.conninfo(), at_start=False)
    with psycopg.connect(pg_url.conninfo(), autocommit=True) as conn:
        for statement in (  # as that bridge left it: version 7 (replaced_keys), no marker
            "ALTER TABLE intents DROP COLUMN cancel_ask",
            "DELETE FROM schema_version WHERE version >= 8",
            "DELETE FROM meta WHERE key LIKE 'schema % compatible from'",
            f"INSERT INTO fleet_nodes (node, heartbeat_at) VALUES ('bridge-old', {PG_NOW})",
        ):
            conn.execute(statement.encode())

    with pytest.raises(SchemaError, match=r"at schema version 7, left by a bridge before 5 Dec 2026, and 1 run on it"):
        pg.migrate(pg_url.conninfo(), at_start=True)
    code, output = upgrade("--store", str(pg_url))
    assert code == 1 and "stop them first, or pass --force" in output, output
    assert pg_version(pg_url) == 7

    code, output = upgrade("--store", str(pg_url), "--force")
    assert code == 0, output
    assert json.loads(output)["applied"] == [8]
