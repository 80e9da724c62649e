"""The WebSocket side of the device front door (`mqtt_door`): a writer per connection.

(The deadline for the upgrade request is `intent_contract.accept.HeadDeadlines`: the door takes a connection once its
upgrade is answered and keeps the same deadline for the CONNECT.)

aiohttp's `send_bytes` is a coroutine, where a stream's `write` is not; a task per message, kept by nobody,
lost its message when the connection ended first (a refused CONNECT's CONNACK) and left its error to the
loop's exception handler ("Task exception was never retrieved"). Here one task per connection sends the
messages in order, `drain` waits until the queue is sent (the back-pressure a TLS stream gets from
`StreamWriter.drain`), and `close` sends what is queued before the connection ends (the door bounds the wait).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from aiohttp import hdrs, web

from intent_contract.accept import PassedOn
from intent_contract.logs import LogThrottle, left_out

logger = logging.getLogger(__name__)

# What aiohttp reads of an upgrade request's head (the WebSocket listener's `web.AppRunner`). Its defaults (128
# header lines of 8,190 bytes) let a connection that never finished its head hold about 2.4 MB of the bridge until
# the deadline, 1.2 GB for the 512 connections the listener holds before authentication. An upgrade needs a
# dozen short lines (Host, Upgrade, Connection, Sec-WebSocket-*, Origin, User-Agent, a cookie from a browser).
UPGRADE_LINE_MAX: Final = 4096  # bytes in the request line, and in one header line
UPGRADE_HEADERS_MAX: Final = 32
SUBPROTOCOL: Final = "mqtt"  # MQTT 3.1.1 section 6: a client offers it, a server selects it [MQTT-6.0.0-3, -4]


def offers_mqtt(offered: str | None) -> bool:
    """Whether an upgrade's Sec-WebSocket-Protocol header (None: there is none) lets the door select `mqtt`."""
    return offered is None or SUBPROTOCOL in (name.strip() for name in offered.split(","))


class Subprotocols:
    """Refuses an upgrade that offers subprotocols, none of them `mqtt`: answered 400, a line at most once in 10 s.

    aiohttp upgraded it without a subprotocol and wrote a warning line for each, so anyone could grow the log a
    line per TLS handshake. An upgrade offering none is taken (clients that leave the header out).
    """

    def __init__(self) -> None:
        self._log = LogThrottle(10.0)

    def check(self, request: web.Request) -> None:
        """web.HTTPBadRequest unless `request` may be upgraded to MQTT."""
        offered = request.headers.get(hdrs.SEC_WEBSOCKET_PROTOCOL)
        if offers_mqtt(offered):
            return
        not_logged = self._log.allow(time.monotonic())
        if not_logged is not None:
            peer, shown = request.remote or "unknown", " ".join(str(offered).split())[:100]
            logger.info(
                "WebSocket upgrade from %s refused: it offers the subprotocols %r, not mqtt%s",
                peer, shown, left_out(not_logged),
                extra={"peer": peer, "code": "no_mqtt_subprotocol", "not_logged": not_logged},
            )  # fmt: skip
        raise web.HTTPBadRequest(text="MQTT over WebSocket takes the subprotocol mqtt\n")


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


class ConnectBudget:
    """Bytes a WebSocket connection may send from its upgrade until its CONNECT is answered; past them it is aborted.

    aiohttp reads a whole WebSocket message (up to the door's `max_msg_size`, about 1 MiB for a device's largest
    PUBLISH) before the door's framer sees its first byte, where on TLS the framer refuses a CONNECT declared over
    MAX_CONNECT from its fixed header. A stranger sending most of a 1 MiB message and then nothing held about
    1.6 MB of the bridge until the CONNECT deadline, 820 MB for the 512 connections the listener holds before
    authentication. `protocol_factory` wraps each connection's protocol to count what it receives, `start` and
    `end` bound the count. The budget takes a largest CONNECT sent a byte per WebSocket frame (7 bytes each).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._left: dict[asyncio.BaseTransport, int] = {}

    def protocol_factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Counted(inner(), self)

    def start(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None and not transport.is_closing():
            self._left[transport] = self.limit

    def end(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None:
            self._left.pop(transport, None)

    def spend(self, transport: asyncio.BaseTransport, size: int) -> bool:
        """False when `transport` has just gone past its budget."""
        left = self._left.get(transport)
        if left is None:
            return True
        self._left[transport] = left - size
        return left >= size


class _Counted(PassedOn):
    """aiohttp's protocol for one connection, every call passed on; what it receives counted against its budget."""

    def __init__(self, inner: asyncio.Protocol, budget: ConnectBudget) -> None:
        super().__init__(inner)
        self._budget = budget

    def connection_lost(self, exc: Exception | None) -> None:
        self._budget.end(self._transport)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        if not self._budget.spend(self._transport, len(data)):
            self._budget.end(self._transport)
            self._transport.abort()
            return
        super().data_received(data)
