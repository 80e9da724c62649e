"""Group commit on PostgreSQL: the executor's small writes of one node share transactions.

A commit costs a WAL flush; one per claim and one per result held a node to a few hundred results a
second on a disk whose flush takes ~30 ms. Calls queue an operation (an async function of the
connection) and await its result; one task takes every operation waiting, runs them in ONE transaction
on one connection, each inside a savepoint (one failing operation does not undo the others), commits,
and then resolves the callers. An awaited call still means "committed".

Only operations that never wait for another node's locks go here (claims skip locked rows; results,
retries, renewals and confirms touch rows this node holds or that are final), so one group cannot
deadlock with another node's. Admission has its own grouped writer (`pg_admit`), which takes locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg_pool import PoolTimeout

from cloud_bridge.errors import BridgeError
from cloud_bridge.store.pg_pools import AsyncConn, PgPools, database_error

logger = logging.getLogger(__name__)

T = TypeVar("T")
Operation = Callable[[AsyncConn], Awaitable[Any]]


@dataclass(slots=True)
class _Pending:
    fn: Operation
    what: str
    future: asyncio.Future[Any]


class PgGroupCommit:
    """One writer task per node; `call` returns once the group holding its operation is committed."""

    def __init__(self, pools: PgPools, *, max_group: int = 500) -> None:
        self._pools = pools
        self._max_group = max_group
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.groups = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="pg-group-commit")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            self._queue.get_nowait().future.cancel()

    async def call(self, fn: Callable[[AsyncConn], Awaitable[T]], what: str) -> T:
        """Run `fn` in the next group; returns once that group is committed."""
        if self._task is None:
            raise RuntimeError("the store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(fn, what, future))
        return await future

    async def _run(self) -> None:
        while True:
            group = [await self._queue.get()]
            while len(group) < self._max_group and not self._queue.empty():
                group.append(self._queue.get_nowait())
            try:
                await self._commit(group)
            except Exception as exc:  # a bug: fail this group's callers, keep serving the next ones
                logger.exception("store group commit failed")
                for op in group:
                    if not op.future.done():
                        op.future.set_exception(exc)

    async def _commit(self, group: list[_Pending]) -> None:
        results: list[tuple[_Pending, Any, BaseException | None]] = []
        try:
            async with self._pools.connection() as conn, conn.transaction():
                for op in group:
                    try:
                        async with conn.transaction():  # a savepoint
                            value = await op.fn(conn)
                    except psycopg.Error as exc:
                        results.append((op, None, database_error(exc, op.what)))
                    except Exception as exc:  # the caller's error; the others' work goes on
                        if not isinstance(exc, BridgeError | ValueError):
                            logger.exception("store operation %s failed", op.what)
                        results.append((op, None, exc))
                    else:
                        results.append((op, value, None))
        except (psycopg.Error, PoolTimeout) as exc:
            logger.error("store transaction failed, %d calls get an error: %s", len(group), type(exc).__name__)
            failure = database_error(exc, "store")
            results = [(op, None, failure) for op in group]
        except asyncio.CancelledError:
            for op in group:
                op.future.cancel()
            raise
        else:
            self._pools.commits += 1
            self.groups += 1
        for op, value, error in results:
            if op.future.done():  # the caller gave up waiting; the work is committed all the same
                continue
            if error is None:
                op.future.set_result(value)
            else:
                op.future.set_exception(error)
