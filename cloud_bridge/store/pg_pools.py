"""A node's PostgreSQL connection pools, and psycopg's errors converted where they enter.

A database that is down or a conflict that aborted a transaction becomes TransientError (the caller may
retry; the edge resends what was not acked). Every use of a pooled connection, the pool's check of it
included, is held to `timeout` seconds (`pg_deadline`), and so is every new connection (libpq's
`connect_timeout`): a database that stops answering fails calls, it does not hold them for ever.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from cloud_bridge.errors import TransientError
from cloud_bridge.store.pg_deadline import DEFAULT_STORE_TIMEOUT, Watchdog, async_limit


def database_error(exc: psycopg.Error | PoolTimeout, what: str) -> TransientError:
    """A psycopg error as ours; its text names the failed check or server message, never the password."""
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    converted = TransientError(f"{what}: {first}", code="store_error")
    converted.__cause__ = exc
    return converted


@contextlib.contextmanager
def converted(what: str) -> Iterator[None]:
    """Turn psycopg errors raised in the block into TransientError."""
    try:
        yield
    except (psycopg.Error, PoolTimeout) as exc:
        raise database_error(exc, what) from exc


def with_connect_timeout(conninfo: str, timeout: float) -> str:
    """`conninfo` with libpq's `connect_timeout` (whole seconds, 2 at least) unless the store URL gives one."""
    if "connect_timeout" in conninfo_to_dict(conninfo):
        return conninfo
    return make_conninfo(conninfo, connect_timeout=str(max(2, math.ceil(timeout))))


AsyncConn = psycopg.AsyncConnection[DictRow]
SyncConn = psycopg.Connection[DictRow]


class PgPools:
    """The node's connections: an async pool (ledger, replay cache) and a small sync pool (registry, CLI)."""

    def __init__(
        self, conninfo: str, *, async_size: int = 8, sync_size: int = 4, timeout: float = DEFAULT_STORE_TIMEOUT
    ) -> None:
        self.conninfo = with_connect_timeout(conninfo, timeout)
        self.timeout = timeout
        self._async: AsyncConnectionPool[AsyncConn] | None = None
        self._sync: ConnectionPool[SyncConn] | None = None
        self._async_size = async_size
        self._sync_size = sync_size
        self._watchdog = Watchdog()
        self.commits = 0  # write transactions of this process, for metrics and benchmarks

    # Both pools check a connection as they hand it out (an empty query: one round trip, against a commit's
    # disk write). A connection the database ended (a restart, a failover, pg_terminate_backend) is replaced
    # then, where it failed the first transaction each idle one was lent to: a batch not acked (the edge sent
    # it again after its ack timeout), a connect refused `store_unavailable`, a result not recorded. The check
    # is held to the time limit too: on a connection whose link went silent it waited for ever.

    def _kwargs(self) -> dict[str, Any]:
        return {"row_factory": dict_row, "autocommit": False}

    async def _check_async(self, conn: AsyncConn) -> None:
        with async_limit(conn, self.timeout):
            await AsyncConnectionPool.check_connection(conn)

    def _check_sync(self, conn: SyncConn) -> None:
        with self._watchdog.limit(conn, self.timeout):
            ConnectionPool.check_connection(conn)

    async def open_async(self) -> None:
        if self._async is not None:
            raise RuntimeError("the PostgreSQL pool is already open")
        pool: AsyncConnectionPool[AsyncConn] = AsyncConnectionPool(
            self.conninfo,
            connection_class=psycopg.AsyncConnection[DictRow],
            kwargs=self._kwargs(),
            min_size=2,
            max_size=self._async_size,
            open=False,
            name="bridge-async",
            check=self._check_async,
            timeout=2 * self.timeout,  # a dead connection's check runs out first: the next one is tried
        )
        with converted("PostgreSQL store"):
            await pool.open(wait=True, timeout=15)
        self._async = pool

    async def close_async(self) -> None:
        pool, self._async = self._async, None
        if pool is not None:
            await pool.close()

    def open_sync(self) -> None:
        if self._sync is not None:
            return
        pool: ConnectionPool[SyncConn] = ConnectionPool(
            self.conninfo,
            connection_class=psycopg.Connection[DictRow],
            kwargs=self._kwargs(),
            min_size=1,
            max_size=self._sync_size,
            open=False,
            name="bridge-sync",
            check=self._check_sync,
            timeout=2 * self.timeout,  # a dead connection's check runs out first: the next one is tried
        )
        with converted("PostgreSQL store"):
            pool.open(wait=True, timeout=15)
        self._sync = pool

    def close_sync(self) -> None:
        pool, self._sync = self._sync, None
        if pool is not None:
            pool.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConn]:
        """A pooled connection for at most `timeout` seconds (the caller opens transactions, converts errors)."""
        if self._async is None:
            raise RuntimeError("the store is not open")
        async with self._async.connection() as conn:
            with async_limit(conn, self.timeout):
                yield conn

    @contextlib.asynccontextmanager
    async def transaction(self, what: str, *, writes: bool = True) -> AsyncIterator[AsyncConn]:
        """A connection in a transaction, committed at the end of the block; psycopg errors converted."""
        if self._async is None:
            raise RuntimeError("the store is not open")
        try:
            async with self._async.connection() as conn:
                with async_limit(conn, self.timeout):
                    async with conn.transaction():
                        yield conn
        except (psycopg.Error, PoolTimeout) as exc:
            raise database_error(exc, what) from exc
        if writes:
            self.commits += 1

    @contextlib.contextmanager
    def sync_transaction(self, what: str) -> Iterator[SyncConn]:
        """The sync pool's counterpart of `transaction` (the registry's calls run in threads)."""
        if self._sync is None:
            raise RuntimeError("the registry is not open")
        try:
            with self._sync.connection() as conn, self._watchdog.limit(conn, self.timeout), conn.transaction():
                yield conn
        except (psycopg.Error, PoolTimeout) as exc:
            raise database_error(exc, what) from exc
