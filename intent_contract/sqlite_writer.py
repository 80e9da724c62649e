"""Group commit on SQLite: one thread owns the connection and commits many callers' work at once.

Callers queue an operation (a function of the connection) and await its result. The thread takes
every operation waiting, runs them in ONE transaction, each inside a savepoint so that one failing
operation does not undo the others, commits once (with synchronous=FULL: one fsync shared by all),
and only then resolves the callers' futures. So an awaited call means "committed".

Both the edge outbox's store and the cloud bridge's ledger are built on it; this is the one piece
of I/O in the shared package.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class _Op:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: asyncio.Future[Any]
    writes: bool


@dataclass(slots=True)
class WriterHooks:
    """Optional behaviour around the writer's transactions."""

    # Called on the writer thread after each group, and every `idle_interval` while idle.
    after_group: Callable[[sqlite3.Connection], None] | None = None
    idle_interval: float = 0.5
    # Turns an exception of an operation or of the commit into the one the caller sees.
    convert: Callable[[BaseException], BaseException] = field(default=lambda exc: exc)
    # Operation exceptions of these types are the caller's business; others are logged as bugs.
    expected: tuple[type[BaseException], ...] = ()
    # Called on the writer thread with the seconds each committed write transaction took (for metrics).
    on_commit: Callable[[float], None] | None = None


class GroupCommitWriter:
    """The writer thread and its queue; `commits` counts write transactions (for tests and metrics)."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        name: str,
        max_group: int = 1000,
        hooks: WriterHooks | None = None,
    ) -> None:
        self._connect = connect
        self._name = name
        self._max_group = max_group
        self._hooks = hooks or WriterHooks()
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0
        self.failing = False  # the last transaction failed

    @property
    def running(self) -> bool:
        return self._thread is not None

    async def start(self) -> None:
        """Connect (on the writer thread) and start serving; raises what connecting raised."""
        if self._thread is not None:
            raise RuntimeError(f"{self._name} already started")
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name=self._name, daemon=True)
        self._thread.start()
        try:
            await ready
        except BaseException:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
            raise

    async def close(self) -> None:
        """Run what is queued, then stop the thread and close the connection."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(thread.join)

    async def call(self, fn: Callable[..., T], *args: Any, writes: bool = True, **kwargs: Any) -> T:
        """Run `fn(conn, *args, **kwargs)` in the next group; returns once that group is committed."""
        if self._thread is None or self._loop is None:
            raise RuntimeError(f"{self._name} is not running")
        future: asyncio.Future[T] = self._loop.create_future()
        self._queue.put(_Op(fn, args, kwargs, future, writes))
        return await future

    def _settle_soon(self, results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            self._loop.call_soon_threadsafe(_settle, results)  # one wake-up for the whole group

    def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            conn = self._connect()
            # Each operation's savepoint keeps, in a statement journal, the pages it changes for the
            # first time; beyond 64 KiB SQLite spills that journal to a temporary file, one pwrite per
            # page. In memory it costs at most the pages one operation touches (bench/findings.md F27).
            conn.execute("PRAGMA temp_store = MEMORY")
        except Exception as exc:  # noqa: BLE001 - handed to the caller of start()
            self._settle_soon([(ready, None, self._hooks.convert(exc))])
            return
        self._settle_soon([(ready, None, None)])
        try:
            stopping = False
            while not stopping:
                try:
                    first = self._queue.get(timeout=self._hooks.idle_interval)
                except queue.Empty:
                    self._after_group(conn)
                    continue
                if first is None:
                    break
                group = [first]
                while len(group) < self._max_group:
                    try:
                        op = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if op is None:
                        stopping = True
                        break
                    group.append(op)
                self._run_group(conn, group)
                self._after_group(conn)
        finally:
            conn.close()

    def _after_group(self, conn: sqlite3.Connection) -> None:
        if self._hooks.after_group is not None:
            try:
                self._hooks.after_group(conn)
            except Exception:
                log.exception("%s: after-group hook failed", self._name)

    def _run_group(self, conn: sqlite3.Connection, group: list[_Op]) -> None:
        writes = any(op.writes for op in group)
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        started = time.perf_counter()
        try:
            conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
            for op in group:
                conn.execute("SAVEPOINT op")
                try:
                    value = op.fn(conn, *op.args, **op.kwargs)
                except Exception as exc:
                    converted = self._hooks.convert(exc)
                    if not isinstance(converted, self._hooks.expected):
                        log.exception("%s: operation %s failed", self._name, getattr(op.fn, "__name__", op.fn))
                    # If SQLite already rolled the whole transaction back (a full disk can), this raises
                    # and the whole group fails below.
                    conn.execute("ROLLBACK TO op")
                    results.append((op.future, None, converted))
                else:
                    results.append((op.future, value, None))
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # Once per episode: callers report what it means to them (a full disk fails every group).
            if not self.failing:
                log.error("%s: transactions fail, callers get an error until one commits: %s", self._name, exc)
            self.failing = True
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            failure = self._hooks.convert(exc)
            results = [(op.future, None, failure) for op in group]
        else:
            # A write's commit ends the episode; a group of reads alone went through on a full disk as well, and
            # every one of them wrote "commit again", then the next write "transactions fail", a pair a second.
            if self.failing and writes:
                log.warning("%s: transactions commit again", self._name)
                self.failing = False
            if writes:
                self.commits += 1
                if self._hooks.on_commit is not None:
                    self._hooks.on_commit(time.perf_counter() - started)
        self._settle_soon(results)


def _settle(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, value, error in results:
        if future.done():  # the caller gave up waiting; the work is committed all the same
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)
