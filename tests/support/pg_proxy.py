"""A TCP proxy between a bridge node and PostgreSQL that the test controls, for faults of the link that the
shared server must not suffer (it is never stopped: other tests use it).

- `blackhole()`: the proxy stops forwarding in both directions and keeps every socket open (a partition, a
  database host that lost power): bytes sent are never answered, and nothing tells the node; new connections
  are accepted and never answered either. `resume()` forwards again (the partition heals; what was held is
  delivered, as TCP retransmits would).
- `strand()`: the connections open now are blackholed for ever, new ones are forwarded (a failover to a standby
  that took the address over, a NAT or firewall that forgot its state: the old sockets hear nothing again).
- `cut()`: every connection through it is reset (RST on both sides), as a failover or a firewall's reset does.
- `refuse()` / `accept()`: new connections are reset at once, or forwarded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

from cloud_bridge.store.url import StoreUrl
from tests.support.net import free_port

_LINGER_RST = struct.pack("ii", 1, 0)  # close() then sends RST, not FIN


class PgProxy:
    """A proxy on 127.0.0.1:`port` to `upstream`, with its own asyncio loop on a daemon thread."""

    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 5432)) -> None:
        self.port = free_port()
        self._upstream = upstream
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="pg-proxy", daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None  # new connections wait for it
        self._links: dict[asyncio.StreamWriter, asyncio.Event] = {}  # client side -> its connection's flow
        self._refusing = False
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0  # accepted since start

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(15)

    def start(self) -> PgProxy:
        async def start() -> None:
            self._flowing = asyncio.Event()
            self._flowing.set()
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

        self._call(start())
        return self

    def url(self, url: StoreUrl) -> StoreUrl:
        """`url` (a database on the upstream server) reached through this proxy."""
        host = f"{self._upstream[0]}:{self._upstream[1]}"
        if host not in url.location:
            raise ValueError(f"{url} is not on {host}")
        return StoreUrl.parse(url.location.replace(host, f"127.0.0.1:{self.port}", 1))

    def blackhole(self) -> None:
        """Stop forwarding; every socket stays open and silent."""

        async def stop() -> None:
            assert self._flowing is not None
            self._flowing.clear()
            for flow in self._links.values():
                flow.clear()

        self._call(stop())

    def resume(self) -> None:
        """Forward again, on the connections open (what was held is delivered) and new ones."""

        async def go() -> None:
            assert self._flowing is not None
            self._flowing.set()
            for flow in self._links.values():
                flow.set()

        self._call(go())

    def strand(self) -> int:
        """Blackhole the connections open now for ever (new ones flow); how many there were."""

        async def strand() -> int:
            links, self._links = list(self._links.values()), {}
            for flow in links:
                flow.clear()
            return len(links)

        return int(self._call(strand()))

    def open_links(self) -> int:
        """Connections forwarded now (not stranded)."""

        async def count() -> int:
            return len(self._links)

        return int(self._call(count()))

    def cut(self) -> int:
        """Reset every connection through the proxy; how many sockets were reset."""

        async def cut() -> int:
            writers, self._writers = list(self._writers), set()
            for writer in writers:
                _reset(writer)
            return len(writers)

        return int(self._call(cut()))

    def refuse(self) -> None:
        self._refusing = True

    def accept(self) -> None:
        self._refusing = False

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self._refusing:
            _reset(client_w)
            return
        self._writers.add(client_w)
        flow = asyncio.Event()
        self._links[client_w] = flow
        try:
            assert self._flowing is not None
            await self._flowing.wait()
            flow.set()
            try:
                backend_r, backend_w = await asyncio.open_connection(*self._upstream)
            except OSError:
                _reset(client_w)
                return
            self._writers.add(backend_w)
            await asyncio.gather(self._pipe(client_r, backend_w, flow), self._pipe(backend_r, client_w, flow))
        finally:
            self._writers.discard(client_w)
            self._links.pop(client_w, None)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flow: asyncio.Event) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                await flow.wait()  # a blackhole holds what was read: never sent, never refused
                writer.write(data)
                await writer.drain()
        self._writers.discard(writer)
        _reset(writer)

    def close(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                _reset(writer)
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._call(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


@contextlib.contextmanager
def pg_proxy() -> Iterator[PgProxy]:
    proxy = PgProxy().start()
    try:
        yield proxy
    finally:
        proxy.close()
