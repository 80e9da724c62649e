"""Store backends for the contract suites: SQLite in a temporary directory, and PostgreSQL in a database
created for the test and dropped after it (the server on 127.0.0.1:5432, trust auth).

Without a reachable PostgreSQL the PostgreSQL cases skip with the reason, except under CI
(OUTBOX_REQUIRE_SERVICES=1), where that is a failure.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import psycopg
import pytest

from cloud_bridge.ledger import DecisionLike, DeviceLike, Ledger
from cloud_bridge.ledger_plan import DEFAULT_MAX_AGE, requests_for
from cloud_bridge.ledger_sqlite_schema import MIGRATIONS as SQLITE_MIGRATIONS
from cloud_bridge.store import Store, open_store
from cloud_bridge.store.url import StoreUrl
from intent_contract.codec import Ack, Envelope

PG_ADMIN = os.environ.get("OUTBOX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ("sqlite", "postgresql")


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL is not reachable at {PG_ADMIN} ({str(exc).strip().splitlines()[0][:120]})"
        if os.environ.get("OUTBOX_REQUIRE_SERVICES") == "1":
            pytest.fail(message + "; OUTBOX_REQUIRE_SERVICES=1 turns this skip into a failure")
        pytest.skip(message)


@contextlib.contextmanager
def pg_database() -> Iterator[StoreUrl]:
    """A fresh, empty database for one test; dropped afterwards even if connections are left open."""
    name = f"bridge_test_{secrets.token_hex(6)}"
    with _admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield StoreUrl.parse(PG_ADMIN.rsplit("/", 1)[0] + f"/{name}")
    finally:
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def waiting_for_a_lock(url: StoreUrl, statement: str) -> int:
    """How many sessions on the database of `url` wait for a lock in a statement that starts with `statement`."""
    with psycopg.connect(url.conninfo(application_name="test lock watch"), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            " AND query LIKE %s",
            (statement + "%",),
        ).fetchone()
    return int(row[0]) if row is not None else 0


def made(url: StoreUrl) -> StoreUrl:
    """`url` with a store made there (as a node's first start or `cloud-bridge db upgrade` makes it): the operators'
    commands refuse a store that was never made."""
    open_store(url, node="test").migrate(False)
    return url


@pytest.fixture
def pg_url() -> Iterator[StoreUrl]:
    """A fresh PostgreSQL database (for tests that need that backend, e.g. several nodes on one store)."""
    with pg_database() as url:
        yield url


@contextlib.contextmanager
def store_url_for(backend: str, tmp_path: Path) -> Iterator[StoreUrl]:
    if backend == "sqlite":
        yield StoreUrl.sqlite(tmp_path / "store")
    else:
        with pg_database() as url:
            yield url


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUrl]:
    """Each backend in turn."""
    with store_url_for(request.param, tmp_path) as url:
        yield url


@contextlib.asynccontextmanager
async def opened(url: StoreUrl, node: str = "node-a", **kwargs: int) -> AsyncIterator[Store]:
    store = open_store(url, node=node, **kwargs)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(store_url: StoreUrl) -> AsyncIterator[Store]:
    """An open store of each backend."""
    async with opened(store_url) as s:
        yield s


async def admit(
    ledger: Ledger,
    device: DeviceLike,
    envelopes: Sequence[Envelope],
    decide: Callable[[Envelope], DecisionLike],
    now: float,
    *,
    max_age: float = DEFAULT_MAX_AGE,
) -> list[Ack]:
    """Judge and admit a batch as the service does."""
    return await ledger.admit(device, requests_for(envelopes, decide, now, max_age), now)


def sqlite_data_dir_of_an_old_release(directory: Path) -> Path:
    """A data directory as a release before the ledger's step 2 and before key rotation left it."""
    directory.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(directory / "ledger.db", isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        for statement in SQLITE_MIGRATIONS[0].statements:
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
    with contextlib.closing(sqlite3.connect(directory / "registry.db", isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(
            "CREATE TABLE devices (device_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL,"
            " public_key TEXT NOT NULL, key_fingerprint TEXT NOT NULL, enrolled_at REAL NOT NULL, revoked_at REAL)"
        )
    return directory


def open_sqlite_stores(directories: Sequence[str], start: Barrier, results: Queue[str]) -> None:
    """In a process of its own: open each data directory as every store command does, each part (the
    ledger's migration at start, the registry, the fleet tables) at the same moment as the other processes
    (`start`); puts one line per part and directory on `results`: "ok" or the part and its error."""
    for directory in directories:
        store = open_store(StoreUrl.sqlite(Path(directory)), node=f"cli-{os.getpid()}")
        parts: dict[str, Callable[[], object]] = {
            "migrate": functools.partial(store.migrate, True),
            "registry": store.registry.open,
            "fleet": store.fleet.open,
        }
        for part, run in parts.items():
            start.wait()
            try:
                run()
                results.put("ok")
            except Exception as exc:  # reported to the test, which shows it
                results.put(f"{part}: {type(exc).__name__}: {exc}")


def open_sqlite_stores_together(directories: Sequence[Path], processes: int) -> list[str]:
    """`processes` processes open each of `directories` at the same moment (real processes, real files);
    returns a line per part of every opening ("ok" or the error)."""
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(processes)
    results: Queue[str] = spawn.Queue()
    names = [str(d) for d in directories]
    workers = [spawn.Process(target=open_sqlite_stores, args=(names, start, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    lines = [results.get(timeout=60) for _ in range(3 * processes * len(names))]
    for worker in workers:
        worker.join(30)
    return lines
