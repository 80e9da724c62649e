"""`cloud-bridge db upgrade` beside running nodes: a step that is not safe while they run is refused unless forced."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from cloud_bridge import ledger_sqlite_schema
from cloud_bridge.cli import main
from cloud_bridge.fleet_schema import FLEET_DB
from cloud_bridge.ledger_sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS
from cloud_bridge.store import pg
from cloud_bridge.store.migrations import Migration
from cloud_bridge.store.pg import MIGRATIONS as PG_MIGRATIONS
from cloud_bridge.store.url import StoreUrl
from tests.support.bridge import CountingIntegration, node, until
from tests.support.stores import pg_url

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
