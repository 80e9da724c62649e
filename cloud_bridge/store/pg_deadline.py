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
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

DEFAULT_STORE_TIMEOUT = 10.0


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
        self._due: list[tuple[float, int, socket.socket]] = []
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
            heapq.heappush(self._due, (self._clock() + seconds, key, sock))
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
                at, key, sock = self._due[0]
                wait = at - self._clock()
                if wait > 0 and key in self._live:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._due)
                if key in self._live:
                    self._live.discard(key)
                    self.fired += 1
                    _shut(sock)  # the block still running closes it


@contextlib.contextmanager
def async_limit(conn: Any, seconds: float) -> Iterator[None]:
    """`Watchdog.limit` for a connection used on the running event loop (a timer of the loop)."""
    sock = _dup_socket(conn)
    if sock is None:
        yield
        return
    handle = asyncio.get_running_loop().call_later(seconds, _shut, sock)
    try:
        yield
    finally:
        handle.cancel()
        sock.close()
