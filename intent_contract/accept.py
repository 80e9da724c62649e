"""Accepting connections from outside: TLS only for those admitted, and deadlines for what comes first.

asyncio's TLS takes a 256 KiB read buffer for every connection the moment it is accepted (Python 3.11's
`SSLProtocol`), and the bridge took every connection: a stranger holding 5,000 idle sockets on the MQTT
port grew the bridge from 92 MB to 1.6 GB, 2,000 on the HTTPS port by 610 MB, with no credential and no
end. Here a listener accepts plain TCP and starts TLS (`loop.start_tls`) only for a connection its
`Admission` admits: at most `per_address` connections from one address (an IPv6 /64 counts as one) and
`total` in all that are not yet *settled*. The MQTT doors settle a connection once its CONNECT has been
answered (an authenticated device is no longer a stranger); the HTTPS listener never does, so there the
limits bound every open connection. A connection past a limit is closed at once (a device backs off and
tries again), counted (`ConnectionWatch`: the metrics) and logged at most once a second per listener.
Each listener has its own limits, so a flood of one port does not shut devices out of another. Without
a TLS context (the edge's metrics endpoint) a listener only counts: what is past its limits is closed.

`HeadDeadlines` bounds what comes before any of our code sees a request: aiohttp has no timeout on
reading a request's head (its keep-alive timer, about an hour, is all), and an upgrade or a request
trickling in a byte a second held its socket for as long as the sender liked; `within_deadlines` is the
aiohttp middleware that takes the deadline when a head is in, bounds the body and the answer, and starts
it again for the next request of a kept-alive connection.

Only public asyncio and aiohttp parts are used: `loop.create_server`, `loop.start_tls`,
`BaseTransport.get_protocol`, `web.Server()` returning an `asyncio.Protocol`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from functools import partial
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from intent_contract import proxied, proxy_header
from intent_contract.accept_limits import Admission, ConnectionLimits, Ticket, from_proxy
from intent_contract.errors import ProxyHeaderError
from intent_contract.logs import LogThrottle, left_out
from intent_contract.proxied import ClientTransport

logger = logging.getLogger(__name__)

TLS_HANDSHAKE_TIMEOUT_S = 60.0  # asyncio's default
PROXY_HEADER_TIMEOUT_S = 10.0  # a balancer sends its PROXY header as it connects


class ConnectionWatch(Protocol):
    """Told of a listener's connections not yet settled (the bridge's metrics)."""

    def connections_pending(self, listener: str, count: int) -> None:
        """`count` connections of `listener` are not yet settled now."""

    def connection_shed(self, listener: str, limit: str) -> None:
        """A connection to `listener` was closed as it was accepted: `limit` ("address", "total") was reached."""


class GuardedListener:
    """Makes the protocols `loop.create_server` needs for one port: admission, then TLS (with a context), then
    `factory`'s protocol."""

    def __init__(
        self,
        name: str,
        factory: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext | None,
        limits: ConnectionLimits,
        *,
        watch: ConnectionWatch | None = None,
        handshake_timeout: float = TLS_HANDSHAKE_TIMEOUT_S,
    ) -> None:
        self.name = name  # for log lines and the metrics: "mqtt", "ws", "https", "metrics"
        self.admission = Admission(limits, partial(watch.connections_pending, name) if watch else None)
        self._factory = factory
        self.context = context  # for connections accepted from now on (a reload may replace it)
        self._watch = watch
        self._handshake_timeout = handshake_timeout
        self._log = LogThrottle()
        self._header_log = LogThrottle()
        self._handshakes: set[asyncio.Task[None]] = set()
        self._awaiting: set[asyncio.Transport] = set()  # balancers' connections whose PROXY header is not yet in

    def protocol(self) -> asyncio.Protocol:
        """For `loop.create_server`: called once per accepted connection."""
        return _Admitting(self)

    async def aclose(self) -> None:
        """Stop the handshakes under way (their connections are closed); call once the server is closed."""
        for transport in list(self._awaiting):
            transport.abort()
        for task in self._handshakes:
            task.cancel()
        if self._handshakes:
            await asyncio.wait(self._handshakes)

    def _shed(self, address: str, limit: str) -> None:
        if self._watch is not None:
            self._watch.connection_shed(self.name, limit)
        not_logged = self._log.allow(time.monotonic())
        if not_logged is not None:
            limits = self.admission.limits
            bound = f"{limits.per_address} from one address" if limit == "address" else f"{limits.total} in all"
            logger.warning(
                "%s connection from %s closed: connections not yet authenticated, %s, is the limit%s",
                self.name, address or "unknown", bound, left_out(not_logged),
                extra={"peer": address, "code": "too_many_connections", "not_logged": not_logged},
            )  # fmt: skip

    def _bad_header(self, address: str, reason: str) -> None:
        not_logged = self._header_log.allow(time.monotonic())
        if not_logged is not None:
            logger.warning(
                "%s connection from the balancer %s closed: %s (is it set to send-proxy?)%s",
                self.name, address, reason, left_out(not_logged),
                extra={"peer": address, "code": "bad_proxy_header", "not_logged": not_logged},
            )  # fmt: skip


class _AwaitedHeader:
    """A balancer's connection whose PROXY header is not yet in: aborted if it is not within PROXY_HEADER_TIMEOUT_S."""

    def __init__(self, transport: asyncio.Transport, address: str, awaiting: set[asyncio.Transport]) -> None:
        self.transport = transport
        self.address = address  # the balancer's
        self.data = bytearray()
        self._timer = asyncio.get_running_loop().call_later(PROXY_HEADER_TIMEOUT_S, transport.abort)
        self._awaiting = awaiting  # the listener's, which aborts them as it stops
        awaiting.add(transport)

    def end(self) -> None:
        self._timer.cancel()
        self._awaiting.discard(self.transport)


class _Admitting(asyncio.Protocol):
    """One accepted connection: closed at once past a limit, else TLS, then the inner protocol with every call."""

    def __init__(self, listener: GuardedListener) -> None:
        self._listener = listener
        self._ticket: Ticket | None = None
        self._inner: asyncio.Protocol | None = None
        self._early: list[bytes] = []  # data that came with the handshake's end, before the inner protocol
        self._eof = False
        self._lost = False
        self._proxy: _AwaitedHeader | None = None  # a balancer's connection until its PROXY header is in

    def settle(self) -> None:
        """This connection no longer counts against its listener's limits."""
        if self._ticket is not None:
            self._ticket.release()
            self._ticket = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # nothing is read before TLS starts
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if from_proxy(address, self._listener.admission.limits.proxies):  # a balancer: its PROXY header first
            self._proxy = _AwaitedHeader(transport, address, self._listener._awaiting)
            transport.resume_reading()
            return
        self._admit(transport, address)

    def _admit(self, transport: asyncio.Transport, address: str, peer: tuple[str, int] | None = None) -> None:
        """Count the connection under `address` and start TLS, or close it past a limit; `peer`: the client's
        address behind a balancer, what the connection's transport gives as its `peername`."""
        ticket = self._listener.admission.admit(address)
        if isinstance(ticket, str):
            transport.abort()
            self._listener._shed(address, ticket)
            return
        self._ticket = ticket
        if self._listener.context is None:  # plain: the inner protocol at once
            self._inner = self._listener._factory()
            self._inner.connection_made(transport if peer is None else ClientTransport(transport, peer))
            for data in self._early:
                self._inner.data_received(data)
            self._early.clear()
            transport.resume_reading()
            return
        task = asyncio.get_running_loop().create_task(self._start_tls(transport, peer))
        self._listener._handshakes.add(task)
        task.add_done_callback(self._listener._handshakes.discard)

    def _header_received(self, data: bytes) -> None:
        """Bytes from a balancer before its PROXY header is complete."""
        awaited = self._proxy
        assert awaited is not None
        awaited.data += data
        try:
            header = proxy_header.parse(bytes(awaited.data))
        except ProxyHeaderError as exc:
            awaited.end()
            awaited.transport.abort()
            self._listener._bad_header(awaited.address, str(exc))
            return
        if header is None:
            return
        awaited.end()
        self._proxy = None
        awaited.transport.pause_reading()  # what follows the header is TLS: read once it has started
        rest = bytes(awaited.data[header.length :])
        if rest:
            self._early.append(rest)
        if header.address is None:  # the balancer's own connection (a health check)
            self._admit(awaited.transport, awaited.address)
        else:
            self._admit(awaited.transport, header.address, (header.address, header.port or 0))

    async def _start_tls(self, transport: asyncio.Transport, peer: tuple[str, int] | None) -> None:
        listener = self._listener
        assert listener.context is not None
        loop = asyncio.get_running_loop()
        for data in self._early:  # the handshake's start, read with a balancer's header: before the socket's rest
            loop.call_soon(proxied.feed, transport, data)
        self._early.clear()
        try:
            tls = await asyncio.get_running_loop().start_tls(
                transport, self, listener.context, server_side=True, ssl_handshake_timeout=listener._handshake_timeout
            )
        except (OSError, EOFError):  # a failed or late handshake, or the connection lost (start_tls closed it)
            self.settle()
            return
        except asyncio.CancelledError:  # the listener stops (start_tls closed the connection)
            self.settle()
            raise
        if tls is None or self._lost:
            self.settle()
            return
        self._inner = inner = listener._factory()
        inner.connection_made(tls if peer is None else ClientTransport(tls, peer))
        for data in self._early:
            inner.data_received(data)
        self._early.clear()
        if self._eof and not inner.eof_received():
            tls.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.settle()
        if self._proxy is not None:
            self._proxy.end()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._proxy is not None:
            self._header_received(data)
        elif self._inner is None:
            self._early.append(data)
        else:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._proxy is not None:  # the balancer's connection ended before its header did
            return False
        if self._inner is None:
            self._eof = True
            return True  # kept open until the inner protocol, which may still answer, decides
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


def settle(transport: asyncio.BaseTransport | None) -> None:
    """The connection on `transport` (one a `GuardedListener` made) no longer counts against its limits."""
    protocol = transport.get_protocol() if transport is not None else None
    if isinstance(protocol, _Admitting):
        protocol.settle()


class HeadDeadlines:
    """Connections that must be taken (`take`) within `seconds` of their TLS handshake, or are aborted.

    `protocol_factory` wraps an aiohttp `web.Server` (the runner's, aiohttp's public low-level server); the
    WebSocket door takes a connection once its upgrade is answered, an HTTP listener once a request's head
    is in (`within_deadlines`), and starts the deadline again when the response is done, for the next
    request's head.
    """

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._timers: dict[asyncio.BaseTransport, asyncio.TimerHandle] = {}

    def protocol_factory(self, server: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A factory of `server`'s protocols under the deadline."""
        return lambda: _Deadlined(server(), self)

    def take(self, transport: asyncio.BaseTransport | None) -> float:
        """Stop the deadline of `transport`: the loop time it was due (now, when it had none: it must end)."""
        timer = self._timers.pop(transport, None) if transport is not None else None
        if timer is None:  # aborted meanwhile (or not ours): what is left must end at once
            return asyncio.get_running_loop().time()
        timer.cancel()
        return timer.when()

    def start(self, transport: asyncio.BaseTransport | None) -> None:
        """The deadline of `transport` starts (again)."""
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            old = self._timers.pop(transport, None)
            if old is not None:
                old.cancel()
            self._timers[transport] = asyncio.get_running_loop().call_later(self._seconds, transport.abort)

    def end(self, transport: asyncio.BaseTransport | None) -> None:
        """The connection on `transport` is lost."""
        timer = self._timers.pop(transport, None) if transport is not None else None
        if timer is not None:
            timer.cancel()


class PassedOn(asyncio.Protocol):
    """A protocol that passes every call on to `inner`: the base of wrappers that watch a connection."""

    def __init__(self, inner: asyncio.Protocol) -> None:
        self._inner = inner
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _Deadlined(PassedOn):
    """aiohttp's protocol for one connection, every call passed on; the deadline starts with the connection."""

    def __init__(self, inner: asyncio.Protocol, deadlines: HeadDeadlines) -> None:
        super().__init__(inner)
        self._deadlines = deadlines

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._deadlines.start(transport)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadlines.end(self._transport)
        super().connection_lost(exc)


def within_deadlines(heads: HeadDeadlines, request_timeout: float) -> Middleware:
    """An aiohttp middleware: a request's head in takes its connection's head deadline, its body and answer get
    `request_timeout` seconds (past them the connection is aborted), and the next head's deadline starts."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        heads.take(transport)  # the head is in
        try:
            async with asyncio.timeout(request_timeout) as deadline:
                return await handler(request)
        except TimeoutError:
            if not deadline.expired() or transport is None:
                raise
            transport.abort()  # a body trickling in, or a handler stuck: the connection ends here
            raise web.HTTPRequestTimeout() from None
        finally:
            heads.start(transport)  # the next request's head, on a kept-alive connection

    return middleware
