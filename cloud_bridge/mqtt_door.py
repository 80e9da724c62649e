"""The device front door on the project's own MQTT 3.1.1 codec: TLS, and WebSocket over TLS.

What a device does here is small and fixed (connect with its token, subscribe to its acks topic,
publish batches and confirms QoS 1, receive acks QoS 1), so this speaks exactly that, through the
shared, pure codec (`intent_contract.mqtt_packets`) and the bridge's own rules (`DeviceEvents`):
- every packet is bounded from its fixed header: a CONNECT over MAX_CONNECT, or any later packet
  over MAX_PACKET, closes the connection before its body is read;
- CONNECT must come within CONNECT_TIMEOUT_S of the TLS handshake (over WebSocket, the HTTP upgrade
  too: a connection not upgraded by then is aborted); MQTT 5 is answered "unsupported protocol version";
  keepalive is enforced at 1.5 times the device's value; a second connection with the same client
  id takes over (the first is closed);
- a permitted publish is handed to `DeviceEvents.on_publish` and acknowledged; nothing a device
  publishes is kept or routed to anyone (the ACL lets nobody subscribe to it);
- `send` writes a QoS 1 PUBLISH to the device's connection when it subscribes to that topic; what a
  connection drops stays unconfirmed in the ledger and goes again when the device subscribes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from aiohttp import WSMsgType, web

from cloud_bridge import mqtt_ws
from cloud_bridge.errors import BridgeError, ConfigError
from cloud_bridge.front_door import MAX_CONNECT, MAX_PACKET, DeviceEvents, Listen, Transport
from cloud_bridge.http_server import server_ssl_context
from cloud_bridge.topic_acl import Access
from intent_contract import mqtt_packets as p
from intent_contract.accept import GuardedListener, HeadDeadlines, settle
from intent_contract.errors import MalformedPacketError
from intent_contract.logs import LogThrottle, left_out
from intent_contract.mqtt_packets import ConnackCode, Type
from intent_contract.server_log import ServerLog
from intent_contract.turns import Turns

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0  # from the TLS handshake to the CONNECT (over WebSocket, the upgrade included)
V5_UNSUPPORTED = bytes([0x20, 3, 0, 0x84, 0])  # an MQTT 5 CONNACK: "unsupported protocol version"
# Past WRITE_HIGH_WATER bytes not yet sent to a device, the door reads nothing more from it until they are
# (each SUBSCRIBE to its acks sends every unconfirmed result again: one that stopped reading and subscribed
# in a loop grew the bridge by 1.5 GB), and drops it if they are not within SLOW_READER_S; past
# WRITE_HARD_LIMIT a send drops it at once. What it was sent stays unconfirmed in the ledger and goes
# again when the device subscribes again.
WRITE_HIGH_WATER = 4 << 20
WRITE_HARD_LIMIT = 64 << 20
SLOW_READER_S = 60.0
MAX_FILTERS = 8  # in one SUBSCRIBE or UNSUBSCRIBE: a device subscribes to its acks (one held up every device for 3 s)
FLUSH_TIMEOUT_S = 2.0  # at a connection's end, what it wrote (a refusing CONNACK) gets this long to go out


@dataclass(slots=True)
class _Link:
    """One way to move bytes: a TLS stream or a WebSocket; both look alike to a connection."""

    read: Callable[[], Awaitable[bytes]]  # b"" at the end
    write: Callable[[bytes], None]
    drain: Callable[[], Awaitable[None]]
    buffered: Callable[[], int]
    abort: Callable[[], None]  # at once, from outside the connection (drop, take-over, stop)
    close: Callable[[], Awaitable[None]]  # the connection's own end: what it wrote is sent first, then abort
    settle: Callable[[], None]  # the CONNECT is answered: the connection leaves its listener's limits (accept)
    peer: str  # address:port, for log lines
    host: str  # the address alone (fleet telemetry counts the addresses a device connects from)


@dataclass(slots=True)
class _Connection:
    link: _Link
    device_id: str = ""
    key: str = ""  # the device key it authenticated with
    subscriptions: set[str] = field(default_factory=set)
    next_id: int = 1
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def packet_id(self) -> int:
        packet_id = self.next_id
        self.next_id = packet_id % 65535 + 1
        return packet_id


class MqttFrontDoor:
    """DeviceFrontDoor on asyncio streams (TLS) and aiohttp WebSockets (TLS)."""

    def __init__(self, listens: Sequence[Listen], events: DeviceEvents) -> None:
        self._listens = list(listens)
        self._events = events
        self._servers: list[asyncio.AbstractServer] = []
        self._tls: list[GuardedListener] = []
        self._runners: list[web.AppRunner] = []
        self._connections: dict[str, _Connection] = {}
        self._handlers: dict[asyncio.Task[None], _Link] = {}  # every connection served, authenticated or not
        self._attaching = Turns()
        self._upgrades = HeadDeadlines(CONNECT_TIMEOUT_S)
        self._subprotocols = mqtt_ws.Subprotocols()
        self._budget = mqtt_ws.ConnectBudget(8 * MAX_CONNECT)  # a largest CONNECT a byte per frame: 7 bytes a byte
        # A malformed packet is a line a second, saying how many were left out: anyone who can finish a TLS
        # handshake can send a malformed CONNECT, and 300 connections doing so wrote 300 WARNING lines.
        self._malformed_log = LogThrottle()

    async def start(self) -> None:
        try:
            for listen in self._listens:
                context = server_ssl_context(listen.cert, listen.key)
                if listen.transport is Transport.TCP:
                    name, factory = "mqtt", self._stream_protocol
                else:
                    app = web.Application()
                    app.router.add_get("/{path:.*}", self._serve_websocket)
                    line, headers = mqtt_ws.UPGRADE_LINE_MAX, mqtt_ws.UPGRADE_HEADERS_MAX
                    runner = web.AppRunner(
                        app, access_log=None, handle_signals=False, logger=ServerLog(),
                        max_line_size=line, max_field_size=line, max_headers=headers,
                    )  # fmt: skip
                    await runner.setup()
                    self._runners.append(runner)
                    assert runner.server is not None
                    # Not web.TCPSite: its protocol has no deadline on reading the upgrade request.
                    name, factory = "ws", self._budget.protocol_factory(self._upgrades.protocol_factory(runner.server))
                tls = GuardedListener(name, factory, context, listen.limits, watch=listen.watch)
                self._tls.append(tls)
                host, port = listen.bind.host, listen.bind.port
                server = await asyncio.get_running_loop().create_server(tls.protocol, host, port)
                self._servers.append(server)
        except OSError as exc:
            await self.stop()
            raise ConfigError(f"MQTT listener failed to start: {exc.strerror or exc}", code="listen_failed") from None
        except BridgeError:
            await self.stop()
            raise

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for tls in self._tls:
            await tls.aclose()
        for link in list(self._handlers.values()):  # a stranger's too: its handler must end, not be cancelled
            link.abort()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        for runner in self._runners:
            await runner.cleanup()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        self._tls.clear()
        self._runners.clear()

    def use_tls(self, context: ssl.SSLContext) -> None:
        for tls in self._tls:
            tls.context = context

    def connected(self) -> list[str]:
        return list(self._connections)

    def session_keys(self) -> dict[str, str]:
        return {device_id: connection.key for device_id, connection in self._connections.items()}

    def holds(self, device_id: str) -> bool:
        return device_id in self._connections

    def subscribed(self, device_id: str, topic: str) -> bool:
        """True when the device is connected here and subscribed to `topic`."""
        connection = self._connections.get(device_id)
        return connection is not None and topic in connection.subscriptions

    def send(self, device_id: str, topic: str, data: bytes) -> bool:
        connection = self._connections.get(device_id)
        if connection is None or topic not in connection.subscriptions:
            return False
        if not self._events.allowed(device_id, topic, Access.RECEIVE):
            return False
        if connection.link.buffered() > WRITE_HARD_LIMIT:
            _slow_reader(connection, f"{connection.link.buffered()} bytes sent to it unread")
            connection.link.abort()
            return False
        connection.link.write(p.encode_publish(topic, data, 1, connection.packet_id(), retain=False, dup=False))
        return True

    async def drop(self, device_id: str, key: str | None = None) -> bool:
        connection = self._connections.get(device_id)
        if connection is None or (key is not None and connection.key != key):
            return False
        connection.link.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await connection.closed.wait()
        return True

    # -- transports ------------------------------------------------------------------------------

    def _stream_protocol(self) -> asyncio.Protocol:
        return asyncio.StreamReaderProtocol(asyncio.StreamReader(), self._serve_stream)

    async def _serve_stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transport = writer.transport

        async def read() -> bytes:
            return await reader.read(65536)

        async def close() -> None:
            transport.abort()  # a stream's write hands its bytes to the transport at once

        peername = writer.get_extra_info("peername")
        link = _Link(read, writer.write, writer.drain, transport.get_write_buffer_size, transport.abort, close,
                     partial(settle, transport), _peer(peername), _host(peername))  # fmt: skip
        try:
            await self._run(link, asyncio.get_running_loop().time() + CONNECT_TIMEOUT_S)
        finally:
            transport.abort()

    async def _serve_websocket(self, request: web.Request) -> web.StreamResponse:
        self._subprotocols.check(request)
        self._budget.start(request.transport)  # what comes after the head, until the CONNECT is answered
        ws = web.WebSocketResponse(protocols=(mqtt_ws.SUBPROTOCOL,), max_msg_size=MAX_PACKET + 1024, autoping=True)
        await ws.prepare(request)  # a request that is no upgrade raises here; its deadline still runs
        transport = request.transport
        assert transport is not None
        connect_by = self._upgrades.take(transport)

        async def read() -> bytes:
            while True:
                message = await ws.receive()
                if message.type is WSMsgType.BINARY:
                    return bytes(message.data)
                if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    return b""

        remote = request.remote or ""
        writer = mqtt_ws.WebSocketWriter(ws, _peer(remote))

        def buffered() -> int:
            return writer.buffered() + transport.get_write_buffer_size()

        async def close() -> None:
            try:
                async with asyncio.timeout(FLUSH_TIMEOUT_S):
                    await writer.close()
            except TimeoutError:
                pass
            finally:
                transport.abort()

        def settled() -> None:
            settle(transport)
            self._budget.end(transport)

        link = _Link(read, writer.write, writer.drain, buffered, transport.abort, close, settled, _peer(remote), remote)
        await self._run(link, connect_by)
        return ws

    # -- one connection --------------------------------------------------------------------------

    async def _run(self, link: _Link, connect_by: float) -> None:
        """Serve one connection, whose CONNECT must come by the loop time `connect_by`."""
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = link
        connection = _Connection(link)
        framer = p.Framer(MAX_CONNECT)
        try:
            keepalive = await self._handshake(connection, framer, connect_by)
            if keepalive is None:
                return
            framer.max_packet = MAX_PACKET
            await self._read_loop(connection, framer, keepalive)
        except MalformedPacketError as exc:
            not_logged = self._malformed_log.allow(time.monotonic())
            if not_logged is not None:
                logger.warning(
                    "MQTT packet refused from %s (%s): %s; connection closed%s", connection.device_id or "-",
                    link.peer, exc, left_out(not_logged),
                    extra={"device_id": connection.device_id or None, "peer": link.peer, "code": "malformed_packet",
                           "not_logged": not_logged},
                )  # fmt: skip
        except TimeoutError:
            logger.info("device %s sent nothing within 1.5 times its keepalive: closed", connection.device_id or "-",
                        extra={"device_id": connection.device_id or None, "peer": link.peer})  # fmt: skip
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                await link.close()
            finally:
                if connection.device_id and self._connections.get(connection.device_id) is connection:
                    del self._connections[connection.device_id]
                connection.closed.set()
                del self._handlers[task]

    async def _packets(self, connection: _Connection, framer: p.Framer) -> list[tuple[int, bytes]]:
        data = await connection.link.read()
        if not data:
            raise ConnectionResetError
        return framer.feed(data)

    async def _handshake(self, connection: _Connection, framer: p.Framer, connect_by: float) -> int | None:
        """Read and answer the CONNECT; the keepalive in seconds, or None when the connection must end."""
        link = connection.link
        frames: list[tuple[int, bytes]] = []
        try:
            async with asyncio.timeout_at(connect_by):
                while not frames:
                    frames = await self._packets(connection, framer)
        except (TimeoutError, ConnectionError):
            return None
        first, body = frames[0]
        if first >> 4 != Type.CONNECT:
            return None
        connect = p.decode(first, body)
        assert isinstance(connect, p.Connect)
        if connect.level == 5:
            link.write(V5_UNSUPPORTED)
            return None
        if (connect.protocol, connect.level) != ("MQTT", 4):
            link.write(p.encode(p.Connack(False, ConnackCode.BAD_PROTOCOL_VERSION)))
            return None
        events = self._events
        key = await events.authenticate(connect.client_id, connect.username, connect.password, link.host)
        link.settle()
        if key is None:
            link.write(p.encode(p.Connack(False, ConnackCode.NOT_AUTHORIZED)))
            return None
        # One CONNECT of a client id at a time: between reading who holds it and taking it this awaits the
        # older connection's end, and three CONNECTs at once left one connection running untracked (never
        # dropped on revocation, nor at stop).
        async with self._attaching.turn(connect.client_id):
            old = self._connections.get(connect.client_id)
            if old is not None:  # take-over: the newer connection wins, as MQTT says
                old.link.abort()
                await old.closed.wait()
            connection.device_id, connection.key = connect.client_id, key
            self._connections[connect.client_id] = connection
            link.write(p.encode(p.Connack(False, ConnackCode.ACCEPTED)))
        for frame in frames[1:]:
            await self._handle(connection, p.decode(*frame))
        return connect.keepalive

    async def _read_loop(self, connection: _Connection, framer: p.Framer, keepalive: int) -> None:
        loop = asyncio.get_running_loop()
        grace = keepalive * 1.5 if keepalive else None
        async with asyncio.timeout(grace) as deadline:
            while True:
                for first, body in await self._packets(connection, framer):
                    await self._handle(connection, p.decode(first, body))
                    if connection.link.buffered() > WRITE_HIGH_WATER:  # after each packet: one read holds hundreds
                        await self._drain(connection)
                if grace is not None:
                    deadline.reschedule(loop.time() + grace)

    async def _drain(self, connection: _Connection) -> None:
        try:
            async with asyncio.timeout(SLOW_READER_S):
                await connection.link.drain()
        except TimeoutError:
            _slow_reader(connection, f"what it was sent unread for {SLOW_READER_S:.0f} s")
            raise ConnectionResetError from None

    async def _handle(self, connection: _Connection, packet: p.Packet) -> None:
        link, device_id = connection.link, connection.device_id
        if isinstance(packet, p.Publish):
            if packet.qos == 2:
                raise MalformedPacketError("devices publish at QoS 0 or 1")
            if self._events.allowed(device_id, packet.topic, Access.PUBLISH):
                self._events.on_publish(device_id, packet.topic, packet.payload)
            if packet.qos == 1:
                assert packet.packet_id is not None
                link.write(p.encode_ack(Type.PUBACK, packet.packet_id))
        elif isinstance(packet, p.Subscribe):
            if len(packet.filters) > MAX_FILTERS:
                raise MalformedPacketError(f"a device subscribes to at most {MAX_FILTERS} filters at once")
            codes: list[int] = []
            for topic_filter, qos in packet.filters:
                if self._events.allowed(device_id, topic_filter, Access.SUBSCRIBE):
                    connection.subscriptions.add(topic_filter)
                    codes.append(min(qos, 1))
                else:
                    codes.append(p.SUBACK_FAILURE)
            link.write(p.encode(p.Suback(packet.packet_id, tuple(codes))))
            for topic_filter in connection.subscriptions & {f for f, _ in packet.filters}:
                await self._events.on_subscribed(device_id, topic_filter)
        elif isinstance(packet, p.Unsubscribe):
            if len(packet.filters) > MAX_FILTERS:
                raise MalformedPacketError(f"a device unsubscribes from at most {MAX_FILTERS} filters at once")
            connection.subscriptions.difference_update(packet.filters)
            link.write(p.encode_ack(Type.UNSUBACK, packet.packet_id))
        elif isinstance(packet, p.Bare) and packet.type is Type.PINGREQ:
            link.write(p.encode(p.Bare(Type.PINGRESP)))
        elif isinstance(packet, p.Bare) and packet.type is Type.DISCONNECT:
            raise ConnectionResetError
        elif isinstance(packet, p.PacketIdOnly) and packet.type is Type.PUBACK:
            pass  # a delivered ack: nothing is held for it (unconfirmed results are resent on subscribe)
        else:
            raise MalformedPacketError(f"a device does not send {type(packet).__name__} here")


def _slow_reader(connection: _Connection, what: str) -> None:
    logger.warning(
        "device %s left %s: connection closed", connection.device_id, what,
        extra={"device_id": connection.device_id, "peer": connection.link.peer, "code": "slow_reader"},
    )  # fmt: skip


def _host(address: object) -> str:
    return str(address[0]) if isinstance(address, tuple) and address else ""


def _peer(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address) if address else "unknown"
