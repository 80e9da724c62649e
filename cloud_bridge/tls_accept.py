"""Accepting connections on the bridge's TLS ports: TLS only for those admitted, and deadlines for what comes first.

asyncio's TLS takes a 256 KiB read buffer for every connection the moment it is accepted (Python 3.11's
`SSLProtocol`), and the bridge took every connection: a stranger holding 5,000 idle sockets on the MQTT
port grew the bridge from 92 MB to 1.6 GB, 2,000 on the HTTPS port by 610 MB, with no credential and no
end. Here a listener accepts plain TCP and starts TLS (`loop.start_tls`) only for a connection its
`Admission` admits: at most `per_address` connections from one address (an IPv6 /64 counts as one) and
`total` in all that are not yet *settled*. The MQTT doors settle a connection once its CONNECT has been
answered (an authenticated device is no longer a stranger); the HTTPS listener never does, so there the
limits bound every open connection. A connection past a limit is closed at once (a device backs off and
tries again), counted (`ConnectionWatch`: the metrics) and logged at most once a second per listener.
Each listener has its own limits, so a flood of one port does not shut devices out of another.

`HeadDeadlines` bounds what comes before any of the bridge's code sees a request: aiohttp has no timeout
on reading a request's head (its keep-alive timer, about an hour, is all), and an upgrade or a request
trickling in a byte a second held its socket for as long as the sender liked.

Only public asyncio and aiohttp parts are used: `loop.create_server`, `loop.start_tls`,
`BaseTransport.get_protocol`, `web.Server()` returning an `asyncio.Protocol`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from cloud_bridge.enroll_limits import address_key
from intent_contract.logs import LogThrottle

logger = logging.getLogger(__name__)

TLS_HANDSHAKE_TIMEOUT_S = 60.0  # asyncio's default


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Connections not yet settled, per listener: from one address (an IPv6 /64) and in all."""

    per_address: int = 128
    total: int = 512

    def __post_init__(self) -> None:
        if not 1 <= self.per_address <= self.total:
            raise ValueError("connection limits: 1 <= per_address <= total")


DEFAULT_CONNECTION_LIMITS = ConnectionLimits()


class Admission:
    """Counts a listener's connections that are not yet settled; pure (no I/O, no clock; `on_count` hears counts)."""

    def __init__(self, limits: ConnectionLimits, on_count: Callable[[int], None] | None = None) -> None:
        self.limits = limits
        self._on_count = on_count  # told every new count
        self._by_address: Counter[str] = Counter()
        self._total = 0

    @property
    def pending(self) -> int:
        return self._total

    def admit(self, address: str) -> Ticket | str:
        """A ticket for one more connection from `address`, or which limit refuses it ("address", "total")."""
        key = address_key(address)
        if self._total >= self.limits.total:
            return "total"
        if self._by_address[key] >= self.limits.per_address:
            return "address"
        self._by_address[key] += 1
        self._total += 1
        if self._on_count is not None:
            self._on_count(self._total)
        return Ticket(self, key)

    def _release(self, key: str) -> None:
        self._total -= 1
        left = self._by_address[key] - 1
        if left:
            self._by_address[key] = left
        else:
            del self._by_address[key]
        if self._on_count is not None:
            self._on_count(self._total)


class Ticket:
    """One admitted connection's place; `release` gives it back (once, however often it is called)."""

    __slots__ = ("_admission", "_key")

    def __init__(self, admission: Admission, key: str) -> None:
        self._admission: Admission | None = admission
        self._key = key

    def release(self) -> None:
        if self._admission is not None:
            self._admission._release(self._key)
            self._admission = None


class ConnectionWatch(Protocol):
    """Told of a listener's connections not yet settled (the bridge's metrics)."""

    def connections_pending(self, listener: str, count: int) -> None:
        """`count` connections of `listener` are not yet settled now."""

    def connection_shed(self, listener: str, limit: str) -> None:
        """A connection to `listener` was closed as it was accepted: `limit` ("address", "total") was reached."""


class TlsListener:
    """Makes the protocols `loop.create_server` needs for one port: admission, then TLS, then `factory`'s protocol."""

    def __init__(
        self,
        name: str,
        factory: Callable[[], asyncio.Protocol],
        context: ssl.SSLContext,
        limits: ConnectionLimits,
        *,
        watch: ConnectionWatch | None = None,
        handshake_timeout: float = TLS_HANDSHAKE_TIMEOUT_S,
    ) -> None:
        self.name = name  # for log lines and the metrics: "mqtt", "ws", "https"
        self.admission = Admission(limits, partial(watch.connections_pending, name) if watch else None)
        self._factory = factory
        self.context = context  # for connections accepted from now on (a reload may replace it)
        self._watch = watch
        self._handshake_timeout = handshake_timeout
        self._log = LogThrottle()
        self._handshakes: set[asyncio.Task[None]] = set()

    def protocol(self) -> asyncio.Protocol:
        """For `loop.create_server`: called once per accepted connection."""
        return _Admitting(self)

    async def aclose(self) -> None:
        """Stop the handshakes under way (their connections are closed); call once the server is closed."""
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
            more = f" ({not_logged} more since the last line)" if not_logged else ""
            logger.warning(
                "%s connection from %s closed: connections not yet authenticated, %s, is the limit%s",
                self.name, address or "unknown", bound, more,
                extra={"peer": address, "code": "too_many_connections", "not_logged": not_logged},
            )  # fmt: skip


class _Admitting(asyncio.Protocol):
    """One accepted connection: closed at once past a limit, else TLS, then the inner protocol with every call."""

    def __init__(self, listener: TlsListener) -> None:
        self._listener = listener
        self._ticket: Ticket | None = None
        self._inner: asyncio.Protocol | None = None
        self._early: list[bytes] = []  # data that came with the handshake's end, before the inner protocol
        self._eof = False
        self._lost = False

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
        ticket = self._listener.admission.admit(address)
        if isinstance(ticket, str):
            transport.abort()
            self._listener._shed(address, ticket)
            return
        self._ticket = ticket
        task = asyncio.get_running_loop().create_task(self._start_tls(transport))
        self._listener._handshakes.add(task)
        task.add_done_callback(self._listener._handshakes.discard)

    async def _start_tls(self, transport: asyncio.Transport) -> None:
        listener = self._listener
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
        inner.connection_made(tls)
        for data in self._early:
            inner.data_received(data)
        self._early.clear()
        if self._eof and not inner.eof_received():
            tls.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.settle()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            self._early.append(data)
        else:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
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
    """The connection on `transport` (a TLS transport a `TlsListener` made) no longer counts against its limits."""
    protocol = transport.get_protocol() if transport is not None else None
    if isinstance(protocol, _Admitting):
        protocol.settle()


class HeadDeadlines:
    """Connections that must be taken (`take`) within `seconds` of their TLS handshake, or are aborted.

    `protocol_factory` wraps an aiohttp `web.Server` (the runner's, aiohttp's public low-level server); the
    WebSocket door takes a connection once its upgrade is answered, the HTTPS listener once a request's
    head is in, and starts the deadline again when the response is done, for the next request's head.
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


class _Deadlined(asyncio.Protocol):
    """aiohttp's protocol for one connection, every call passed on; the deadline starts with the connection."""

    def __init__(self, inner: asyncio.Protocol, deadlines: HeadDeadlines) -> None:
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
