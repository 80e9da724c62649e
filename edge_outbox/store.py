"""The running outbox's storage: the shared group-commit writer on the outbox database.

Every call is an operation on the writer thread; many publishers waiting at once share one
transaction and one fsync, and a call returns only once its group is committed, so an await on
the store means "on disk". After each group, and twice a second while idle (to see changes made by
ops commands in other processes), what the status log gained is handed to `on_events`: the events
themselves while `wants_events()` says a consumer reads them, else only their newest seq and two flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from edge_outbox import db, event_log
from edge_outbox.errors import OutboxError, StorageError
from intent_contract.sqlite_writer import GroupCommitWriter, WriterHooks

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_GROUP = 2000


class Store:
    """Asynchronous facade over the writer thread."""

    def __init__(
        self,
        data_dir: Path,
        on_events: Callable[[event_log.EventsSeen], None] | None = None,
        on_commit: Callable[[float], None] | None = None,
        wants_events: Callable[[], bool] = lambda: True,
    ) -> None:
        self.data_dir = data_dir
        self._on_events = on_events
        self._wants_events = wants_events  # asked on the writer thread: it reads a flag, nothing more
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_event = 0
        self._writer = GroupCommitWriter(
            self._connect,
            name="outbox-writer",
            max_group=MAX_GROUP,
            hooks=WriterHooks(
                after_group=self._report_events, convert=self._convert, expected=(OutboxError,), on_commit=on_commit
            ),
        )

    @property
    def commits(self) -> int:
        """Group commits so far (for tests and metrics)."""
        return self._writer.commits

    async def start(self) -> None:
        """Open the database and start the writer; events committed from now on are reported."""
        self._loop = asyncio.get_running_loop()
        await self._writer.start()

    async def close(self) -> None:
        await self._writer.close()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(conn, *args, **kwargs)` in the next group commit; returns once it is committed."""
        if not self._writer.running:
            raise StorageError("the store is not running")
        return await self._writer.call(fn, *args, **kwargs)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a reading `fn(conn, *args)` on the writer thread (it joins the next group, writes nothing)."""
        if not self._writer.running:
            raise StorageError("the store is not running")
        return await self._writer.call(fn, *args, writes=False)

    async def read_aside(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a reading `fn(conn, *args)` on a connection of its own, in a worker thread, never behind the writer.

        For the metrics and health endpoint: behind the writer, a read waited for every group ahead of it, and
        while another program held the database's write lock (a backup, `sqlite3` left in a transaction) each
        group waited out the busy timeout, so /healthz never answered, not even that intake was paused. A WAL
        reader waits for no writer.
        """

        def run() -> T:
            with contextlib.closing(db.connect(self.data_dir, create=False)) as conn:
                conn.execute("PRAGMA query_only = ON")
                return fn(conn, *args)

        try:
            return await asyncio.to_thread(run)
        except sqlite3.Error as exc:
            raise StorageError(db.fault_text(self.data_dir, exc, "could not read")) from exc

    def _connect(self) -> sqlite3.Connection:
        conn = db.connect(self.data_dir)
        self._last_event = event_log.last_event_seq(conn)
        return conn

    def _convert(self, exc: BaseException) -> BaseException:
        if isinstance(exc, sqlite3.Error):
            return StorageError(db.fault_text(self.data_dir, exc, "could not commit to"))
        return exc

    def _report_events(self, conn: sqlite3.Connection) -> None:
        if self._on_events is None or self._loop is None:
            return
        seen = event_log.events_seen(conn, self._last_event, read=self._wants_events())
        if seen is not None:
            self._last_event = seen.head
            self._loop.call_soon_threadsafe(self._on_events, seen)
