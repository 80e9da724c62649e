"""When the forwarder may connect: inside a forwarding window, or while `edge-outbox flush` asks it to.

`flush` (another process, or this one) asks by writing a deadline under FLUSH_KEY in `meta`; the
running forwarder looks for it once a second while it waits, so a technician's temporary link is
used at once, outside the windows and without waiting out a reconnect backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import sqlite3
from collections.abc import Callable

from edge_outbox import event_log, offline_ops
from edge_outbox.bridge_clock import BridgeClock
from edge_outbox.errors import StorageError
from edge_outbox.store import Store
from edge_outbox.windows import Window, is_open, seconds_until_closed, seconds_until_open

FLUSH_KEY = "flush_until"  # this device's clock (ms) until which a flush asks for a link
_POLL_S = 1.0


def seconds_of_day(epoch_ms: int) -> float:
    """Seconds after local midnight at `epoch_ms` (the machine's time zone)."""
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000).astimezone()
    return moment.hour * 3600 + moment.minute * 60 + moment.second + moment.microsecond / 1e6


def _read(conn: sqlite3.Connection) -> tuple[int, BridgeClock]:
    value = event_log.get_meta(conn, FLUSH_KEY)
    return (int(value) if value else 0), offline_ops.bridge_clock(conn)


class LinkGate:
    def __init__(self, windows: tuple[Window, ...], store: Store, local_ms: Callable[[], int]) -> None:
        self._windows = windows
        self._store = store
        self._local_ms = local_ms
        self._flush_seen = 0
        self._until = 0
        self.clock = BridgeClock()  # the bridge's clock as last read from the store

    async def _flush_until(self) -> int:
        """The stored flush deadline, and the clock read with it; the last ones read when the store cannot say now
        (a full disk fails every read that joins a failing commit, and the forwarder waits here outside its
        handlers: raising ended it for good)."""
        with contextlib.suppress(StorageError):
            self._until, self.clock = await self._store.read(_read)
        return self._until

    async def refresh(self) -> BridgeClock:
        """The bridge clock as stored now (the forwarder, `import-receipt` or `flush` may have moved it)."""
        await self._flush_until()
        return self.clock

    async def _time_of_day(self) -> float:
        await self._flush_until()
        return seconds_of_day(self.clock.bridge_ms(self._local_ms()))

    async def flushing(self) -> bool:
        return await self._flush_until() > self._local_ms()

    async def new_flush(self) -> bool:
        """True once for every flush request that arrived since the last call."""
        until = await self._flush_until()
        if until > self._local_ms() and until != self._flush_seen:
            self._flush_seen = until
            return True
        return False

    async def wait_open(self, on_wait: Callable[[float], None]) -> None:
        """Return once a window is open or a flush asks for a link; `on_wait(seconds)` once if it must wait."""
        told = False
        while True:
            if is_open(self._windows, await self._time_of_day()) or await self.flushing():
                return
            if not told:
                on_wait(seconds_until_open(self._windows, await self._time_of_day()))
                told = True
            await asyncio.sleep(_POLL_S)

    async def sleep(self, seconds: float) -> None:
        """Sleep up to `seconds` (a reconnect backoff), ending early when a flush asks for a link."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            if await self.new_flush():
                return
            await asyncio.sleep(min(_POLL_S, left))

    async def until_closed(self) -> None:
        """Return when the link must end: no window open and no flush asking for it (never without windows)."""
        if not self._windows:
            await asyncio.Event().wait()
        while True:
            left = seconds_until_closed(self._windows, await self._time_of_day())
            if (left is not None and left <= 0) and not await self.flushing():
                return
            await asyncio.sleep(_POLL_S if left is None else min(_POLL_S, max(left, 0.05)))
