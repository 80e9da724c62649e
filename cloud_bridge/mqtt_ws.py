"""The WebSocket side of the device front door (`mqtt_door`): a deadline for the upgrade, a writer per connection.

aiohttp has no timeout on reading a request's headers (its keep-alive timer, about an hour, is all): an
upgrade request trickling in a byte a second held its socket for as long as the sender liked, before
the MQTT CONNECT timeout could start. `UpgradeDeadlines` wraps aiohttp's protocol factory (the runner's
`web.Server`, aiohttp's public low-level server, called once per connection by `loop.create_server`) and
aborts a connection the door has not taken within its seconds of the TLS handshake; the door takes it once
the upgrade is answered and keeps the same deadline for the CONNECT (`take` returns it). Only public parts
of aiohttp are touched: `AppRunner.server`, and `web.Server()` returning an `asyncio.Protocol`.

aiohttp's `send_bytes` is a coroutine, where a stream's `write` is not; a task per message, kept by nobody,
lost its message when the connection ended first (a refused CONNECT's CONNACK) and left its error to the
loop's exception handler ("Task exception was never retrieved"). Here one task per connection sends the
messages in order, `drain` waits until the queue is sent (the back-pressure a TLS stream gets from
`StreamWriter.drain`), and `close` sends what is queued before the connection ends (the door bounds the wait).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web

logger = logging.getLogger(__name__)


class UpgradeDeadlines:
    """Connections that must be taken (`take`) within `seconds` of their TLS handshake, or are aborted."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._timers: dict[asyncio.BaseTransport, asyncio.TimerHandle] = {}

    def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        """A factory for `loop.create_server`: aiohttp's protocol for `server`, under the deadline."""
        return lambda: _Deadlined(server(), self)

    def take(self, transport: asyncio.BaseTransport) -> float:
        """Stop the deadline of `transport` (the door has it now): the loop time it was due."""
        timer = self._timers.pop(transport, None)
        if timer is None:  # aborted meanwhile (or not ours): what is left must end at once
            return asyncio.get_running_loop().time()
        timer.cancel()
        return timer.when()

    def start(self, transport: asyncio.BaseTransport) -> None:
        """The connection on `transport` is made (after its TLS handshake): its deadline starts."""
        if isinstance(transport, asyncio.WriteTransport):
            self._timers[transport] = asyncio.get_running_loop().call_later(self._seconds, transport.abort)

    def end(self, transport: asyncio.BaseTransport | None) -> None:
        """The connection on `transport` is lost."""
        timer = self._timers.pop(transport, None) if transport is not None else None
        if timer is not None:
            timer.cancel()


class _Deadlined(asyncio.Protocol):
    """aiohttp's protocol for one connection, every call passed on; the deadline starts with the connection."""

    def __init__(self, inner: asyncio.Protocol, deadlines: UpgradeDeadlines) -> None:
        self._inner = inner
        self._deadlines = deadlines
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._deadlines.start(transport)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadlines.end(self._transport)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class WebSocketWriter:
    """Sends one WebSocket's binary messages, in order, from one task; its errors end it, never the loop's."""

    def __init__(self, ws: web.WebSocketResponse, peer: str) -> None:
        self._ws = ws
        self._peer = peer
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._queued = 0  # bytes queued and not yet handed to the transport
        self._lost = False
        self._task = asyncio.get_running_loop().create_task(self._send())

    def write(self, data: bytes) -> None:
        """Queue a message (dropped once the connection can take no more, as a closing stream drops it)."""
        if not self._lost:
            self._queue.put_nowait(data)
            self._queued += len(data)

    def buffered(self) -> int:
        return self._queued

    async def drain(self) -> None:
        """Wait until every queued message is handed to the transport; ConnectionResetError if it never will be."""
        await self._queue.join()
        if self._lost:
            raise ConnectionResetError("WebSocket connection lost")

    async def close(self) -> None:
        """Send what is queued, then stop the writer (also when cancelled: bound it with asyncio.timeout)."""
        try:
            await self.drain()
        except ConnectionError:
            pass
        finally:
            self._task.cancel()
            await asyncio.wait([self._task])

    async def _send(self) -> None:
        while not self._lost:
            data = await self._queue.get()
            try:
                await self._ws.send_bytes(data)
            except (ConnectionError, OSError):  # aiohttp: ClientConnectionResetError, "closing transport"
                self._lost = True
            except Exception:  # a bug: logged once, and the connection ends as if lost
                logger.exception("WebSocket write to %s failed", self._peer, extra={"peer": self._peer})
                self._lost = True
            finally:
                self._queued -= len(data)
                self._queue.task_done()
        while not self._queue.empty():  # nothing more can be sent: let drain() return
            self._queue.get_nowait()
            self._queue.task_done()
        self._queued = 0
