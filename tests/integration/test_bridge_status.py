"""`cloud-bridge status` on a busy store, both backends: its event counts are the window's, however many."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing

import psycopg
from click.testing import CliRunner

from cloud_bridge.cli import main
from cloud_bridge.store.url import StoreKind, StoreUrl
from tests.support.stores import made, store_url

__all__ = ["store_url"]  # fixtures
MANY = 100_050  # more than the 100,000 records status read and counted


def _add_audit(url: StoreUrl, rows: list[tuple[float, str]]) -> None:
    insert = "INSERT INTO audit (at, device_id, tenant, intent_id, kind, event, integration, code, detail)"
    values = [(at, "dev-1", "acme", f"i-{n}", "email.send", event, "", "", "") for n, (at, event) in enumerate(rows)]
    if url.kind is StoreKind.SQLITE:
        with closing(sqlite3.connect(url.directory / "ledger.db")) as conn, conn:
            conn.executemany(f"{insert} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
    else:
        with psycopg.connect(url.conninfo()) as conn, conn.cursor() as cursor:
            cursor.executemany(f"{insert} VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", values)


def test_status_counts_every_event_of_its_window(store_url: StoreUrl) -> None:
    made(store_url)
    now = time.time()
    old = [(now - 3 * 86400, "accept")] * 7  # before the window: not counted
    _add_audit(store_url, old + [(now - 60, "accept")] * MANY + [(now - 30, "deliver")] * 3)
    result = CliRunner().invoke(main, ["status", "--json", "--since", "24h", "--store", str(store_url)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "devices": {"active": 0, "revoked": 0},
        "events": {"accept": MANY, "deliver": 3},
    }


def test_audit_says_when_its_limit_left_the_newest_records_out(store_url: StoreUrl) -> None:
    """The audit prints oldest first: a window with more records than --limit lost its newest ones silently."""
    made(store_url)
    now = time.time()
    _add_audit(store_url, [(now - 60 + n, "accept") for n in range(5)])
    where = ["--store", str(store_url), "--since", "1h", "--json"]
    cut = CliRunner().invoke(main, ["audit", "--limit", "3", *where])
    assert cut.exit_code == 0, cut.output
    assert [r["intent_id"] for r in json.loads(cut.stdout)] == ["i-0", "i-1", "i-2"]
    assert cut.stderr == "only the oldest 3 records are shown; more match (raise --limit, or a later --since)\n"
    whole = CliRunner().invoke(main, ["audit", "--limit", "5", *where])
    assert (len(json.loads(whole.stdout)), whole.stderr) == (5, "")
