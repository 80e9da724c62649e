"""The running outbox's one writer: a thread that owns the SQLite connection and commits in groups.

Every call becomes an operation in the writer's queue. The writer takes all operations waiting, runs
them in one transaction (a savepoint each, so one failing operation does not undo the others), and
commits once: with synchronous=FULL that is one fsync shared by every publisher that was waiting.
Only after that commit do the callers' futures resolve, so an await on the store means "on disk".
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from edge_outbox import db, ops
from edge_outbox.db import StatusEvent
from edge_outbox.errors import OutboxError, StorageError

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

MAX_GROUP = 2000
IDLE_POLL_S = 0.5  # how often an idle writer looks for changes made by ops commands in other processes

_Op = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], "asyncio.Future[Any]"]
_Result = tuple["asyncio.Future[Any]", Any, BaseException | None]


class Store:
    """Asynchronous facade over the writer thread."""

    def __init__(self, data_dir: Path, on_events: Callable[[list[StatusEvent]], None] | None = None) -> None:
        self.data_dir = data_dir
        self._on_events = on_events
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_event = 0
        self.commits = 0  # group commits so far, for tests and metrics

    async def start(self, *, replay_key: str | None = None) -> None:
        """Open the database and start the writer.

        With `replay_key`, events after the sequence number stored under that meta key are reported
        again (what a crash may have left unpublished); without it, only new events are reported.
        """
        self._loop = asyncio.get_running_loop()
        conn = await asyncio.to_thread(db.connect, self.data_dir)
        stored = ops.get_meta(conn, replay_key) if replay_key else None
        self._last_event = int(stored) if stored is not None else (0 if replay_key else ops.last_event_seq(conn))
        self._thread = threading.Thread(target=self._run, args=(conn,), name="outbox-writer", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(conn, *args, **kwargs)` in the next group commit; returns once it is committed."""
        if self._thread is None or self._loop is None:
            raise StorageError("the store is not running")
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put((fn, args, kwargs, future))
        return await future

    def _run(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                try:
                    first = self._queue.get(timeout=IDLE_POLL_S)
                except queue.Empty:
                    self._report_events(conn)
                    continue
                if first is None:
                    return
                group = [first]
                stop = False
                while len(group) < MAX_GROUP:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    group.append(item)
                self._commit_group(conn, group)
                self._report_events(conn)
                if stop:
                    return
        finally:
            conn.close()

    def _commit_group(self, conn: sqlite3.Connection, group: list[_Op]) -> None:
        results: list[_Result] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for fn, args, kwargs, future in group:
                conn.execute("SAVEPOINT op")
                try:
                    value = fn(conn, *args, **kwargs)
                except sqlite3.Error:
                    raise  # the transaction itself is in doubt: fail the whole group below
                except Exception as exc:
                    if not isinstance(exc, OutboxError):
                        log.exception("store operation %s failed", getattr(fn, "__name__", fn))
                    conn.execute("ROLLBACK TO op")
                    results.append((future, None, exc))
                else:
                    results.append((future, value, None))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            log.error("commit failed, %d operations not stored: %s", len(group), exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failure = StorageError(f"could not commit to {db.db_path(self.data_dir)}: {exc}")
            results = [(future, None, failure) for *_, future in group]
        assert self._loop is not None
        # One wake-up of the event loop for the whole group, not one per caller.
        self._loop.call_soon_threadsafe(_resolve, results)

    def _report_events(self, conn: sqlite3.Connection) -> None:
        if self._on_events is None or self._loop is None:
            return
        try:
            events = ops.events_after(conn, self._last_event)
        except sqlite3.Error as exc:
            log.warning("could not read status events: %s", exc)
            return
        if events:
            self._last_event = events[-1].seq
            self._loop.call_soon_threadsafe(self._on_events, events)


def _resolve(results: list[_Result]) -> None:
    for future, value, error in results:
        if future.done():  # the caller gave up waiting; the operation is committed all the same
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
