"""A time limit on every use of a pooled PostgreSQL connection: past it, the connection's socket is shut down.

psycopg has no client-side timeout: a query whose answer never comes waits for ever. A database behind a
link that stopped carrying bytes without closing (a partition, a failover behind a TCP proxy or pooler that
keeps its old sockets open, a NAT that forgot the flow, a host that lost power) left the node's calls
waiting for ever: batches never acked, results never recorded, connects never answered, and the node could
not be stopped. A server-side `statement_timeout` does not help (the server may never see the query) and TCP
keepalive takes hours and is answered by any proxy on the way.

Shutting the socket down (not closing it: the descriptor stays psycopg's) wakes the waiting call with
psycopg's own "connection closed" error, which the callers already handle as the store being unreachable,
and the pool discards the connection. The limit is the `[bridge] store_timeout` setting.

Before that, the server is asked to cancel the statement (a cancel request on a connection of its own, itself
limited by libpq's connect_timeout): a server that is up but slow (a statement waiting for a lock that a long
transaction holds) does not notice that the client went away until the statement ends, and each session given
up so stayed, waiting for the lock, while the node opened new ones: a node left one every second or so, and a
lock held for minutes used up the server's connections, for every other client too.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_STORE_TIMEOUT = 10.0
CANCEL_TIMEOUT = 5.0  # the longest a cancel request is waited for, before the socket is shut down all the same


def _dup_socket(conn: Any) -> socket.socket | None:
    """A duplicate of the connection's socket (None when it has none): shutting it down shuts the connection's
    down, and unlike its descriptor number it cannot name another socket once psycopg closed the connection."""
    try:
        fd = conn.pgconn.socket
    except Exception:  # noqa: BLE001 - a connection already closed has nothing to shut down
        return None
    try:
        return socket.socket(fileno=os.dup(fd))
    except OSError:
        return None


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class Watchdog:
    """One thread that shuts down the sockets of sync connections whose time ran out."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._due: list[tuple[float, int, socket.socket, Any]] = []
        self._live: set[int] = set()
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.fired = 0

    @contextlib.contextmanager
    def limit(self, conn: Any, seconds: float) -> Iterator[None]:
        """Shut `conn`'s socket down if the block is still running after `seconds`."""
        sock = _dup_socket(conn)
        if sock is None:
            yield
            return
        with self._cond:
            key = next(self._ids)
            heapq.heappush(self._due, (self._clock() + seconds, key, sock, conn))
            self._live.add(key)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pg-deadline", daemon=True)
                self._thread.start()
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._live.discard(key)
                sock.close()  # its heap entry is dropped when it comes due, or reaches the top

    def _run(self) -> None:
        with self._cond:
            while True:
                if not self._due:
                    self._cond.wait()
                    continue
                at, key, sock, conn = self._due[0]
                wait = at - self._clock()
                if wait > 0 and key in self._live:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._due)
                if key in self._live:
                    self._live.discard(key)
                    self.fired += 1
                    # The cancel may wait (connect_timeout): in a thread of its own, not to hold the other limits.
                    threading.Thread(target=_cancel_then_shut, args=(conn, sock), name="pg-cancel", daemon=True).start()


def _cancel_then_shut(conn: Any, sock: socket.socket) -> None:
    """Ask the server to cancel `conn`'s statement, then shut its socket down (the block still running closes it)."""
    try:
        conn.cancel_safe(timeout=CANCEL_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - the server unreachable too: the shutdown still frees the caller
        logger.debug("cancel request failed: %s", type(exc).__name__)
    _shut(sock)


async def _cancel_then_shut_async(conn: Any, sock: socket.socket) -> None:
    try:
        await conn.cancel_safe(timeout=CANCEL_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - as in _cancel_then_shut
        logger.debug("cancel request failed: %s", type(exc).__name__)
    _shut(sock)


_cancels: set[asyncio.Task[None]] = set()  # held until done (the loop keeps only weak references to tasks)


def _start_cancel(conn: Any, sock: socket.socket, fired: list[asyncio.Task[None]]) -> None:
    task = asyncio.get_running_loop().create_task(_cancel_then_shut_async(conn, sock), name="pg-cancel")
    fired.append(task)
    _cancels.add(task)
    task.add_done_callback(_cancels.discard)


@contextlib.contextmanager
def async_limit(conn: Any, seconds: float) -> Iterator[None]:
    """`Watchdog.limit` for a connection used on the running event loop (a timer of the loop)."""
    sock = _dup_socket(conn)
    if sock is None:
        yield
        return
    fired: list[asyncio.Task[None]] = []
    handle = asyncio.get_running_loop().call_later(seconds, _start_cancel, conn, sock, fired)
    try:
        yield
    finally:
        handle.cancel()
        for task in fired:  # the block ended (the cancel worked): the connection may serve another call now
            task.cancel()
        sock.close()
