"""Signals of the SQLite store: another process (the CLI) changed rows the running node must act on.

SQLite has no NOTIFY, so an operation that needs the node (an operator's retry or cancel: the device
must hear the row's status, the executor must look for work) adds a line to the `signals` table in its
own transaction, and the node reads the lines after the last one it saw every POLL_S (from its
start: a signal from before it started is not needed, it sends every device its results on
subscribe). Lines older than KEEP_S are deleted by the node when it reads new ones. A line is also where
a cancel asked of a running row is signalled (cloud_bridge.cancel_sql): each line's device is also given
to `on_cancel`, since lines come only from operators.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud_bridge.own_threads import own_thread
from intent_contract.logs import FailureEpisode

logger = logging.getLogger(__name__)

POLL_S = 0.5
KEEP_S = 3600.0


def add_signal(conn: Any, device_id: str) -> None:
    """`intent_sql.Signal` for SQLite: one line, committed with the operation."""
    conn.execute("INSERT INTO signals (device_id, at) VALUES (?, ?)", (device_id, time.time()))


class SqliteSignals:
    """`store.Signals` for the SQLite store: polls the `signals` table of the ledger file."""

    def __init__(self, path: Path, *, poll: float = POLL_S) -> None:
        self._path = path
        self._poll = poll
        self._task: asyncio.Task[None] | None = None
        self._seen = 0

    def _read(self, after: int | None) -> tuple[int, list[str]]:
        with contextlib.closing(sqlite3.connect(self._path, timeout=10, isolation_level=None)) as conn:
            if after is None:
                row = conn.execute("SELECT coalesce(max(seq), 0) FROM signals").fetchone()
                return int(row[0]), []
            rows = conn.execute("SELECT seq, device_id FROM signals WHERE seq > ? ORDER BY seq", (after,)).fetchall()
            if rows:  # the table stays tiny: lines come from operators, one per retry or cancel
                conn.execute("DELETE FROM signals WHERE at < ?", (time.time() - KEEP_S,))
            return (rows[-1][0] if rows else after), [r[1] for r in rows]

    async def start(
        self,
        on_results: Callable[[str], None],
        on_work: Callable[[], None],
        on_cancel: Callable[[str], None] = lambda _device_id: None,
    ) -> None:
        self._seen, _ = await own_thread(self._read, None)
        self._task = asyncio.create_task(self._run(on_results, on_work, on_cancel), name="store-signals")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(
        self, on_results: Callable[[str], None], on_work: Callable[[], None], on_cancel: Callable[[str], None]
    ) -> None:
        # A file that cannot be opened (the process out of descriptors) is a line when it starts and one at its
        # end, not a WARNING at every poll (two a second).
        failures = FailureEpisode(logger, "cannot read the store's signals")
        while True:
            await asyncio.sleep(self._poll)
            try:
                self._seen, devices = await own_thread(self._read, self._seen)
            except sqlite3.Error as exc:
                failures.failed(exc)
                continue
            failures.worked()
            for device_id in dict.fromkeys(devices):
                on_results(device_id)
                on_cancel(device_id)
            if devices:
                on_work()
