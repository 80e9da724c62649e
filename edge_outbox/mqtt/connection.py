"""One client connection of the MQTT endpoint: the handshake, packets in, answers and deliveries out.

Publishes are answered in the order they arrived [MQTT-4.6.0-2], each once what it needs is done
(the intake's commit, a persistent session's save). Deliveries come from the session: statuses read
from the status feed from the session's position, then its queued messages, within its window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

from edge_outbox.errors import StorageError
from edge_outbox.intake_rules import CUT_KEEP, replay_after
from edge_outbox.mqtt import dialect as d
from edge_outbox.mqtt import qos2_in
from edge_outbox.mqtt.answers import Answers, shut
from edge_outbox.mqtt.dialect import V311, Dialect, dialect_of
from edge_outbox.mqtt.fill import REPLAY_CHUNK, Replay, queue_replay, queue_statuses
from edge_outbox.mqtt.session import MAX_SUBSCRIPTIONS, QOS_BITS, Send, Session
from edge_outbox.mqtt.topics import is_status_topic, may_publish, may_subscribe, refusal, valid_filter
from edge_outbox.status import STATUS_RETRY_S, StatusFeed
from intent_contract import mqtt_packets as p
from intent_contract.errors import MalformedPacketError
from intent_contract.logs import Context
from intent_contract.mqtt_packets import ConnackCode, Type

if TYPE_CHECKING:
    from edge_outbox.mqtt.server import MqttEndpoint

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
WRITE_HIGH_WATER = 1 << 20
CONNECT_BYTE = 0x10


class _NotMqttError(Exception):
    """The first byte of a connection is not a CONNECT."""


class Connection:
    def __init__(self, endpoint: MqttEndpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.endpoint = endpoint
        self.reader = reader
        self.writer = writer
        self.session: Session | None = None
        self.principal: str | None = None
        self.wake = asyncio.Event()
        self.closed = asyncio.Event()
        self._answers = Answers(writer, lambda: self.name, self._unanswered)
        self._will: p.Will | None = None
        self._graceful = False
        self.expiry_on_leave: int | None = None  # MQTT 5: the session expiry interval its DISCONNECT set, seconds
        self._replay: Replay | None = None
        # An intent over the packet limit is cut (its head read, the rest dropped unread) and refused as too_large:
        # closing the connection made the client send it again on the next, for ever, and nothing behind it came.
        self._framer = p.CuttingFramer(endpoint.settings.max_packet, CUT_KEEP)
        self.dialect: Dialect = V311()
        self._client_max: int | None = None  # MQTT 5: the largest packet the client takes
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.name = self.peer
        self.client_id: str | None = None  # once its CONNECT is read

    def close(self, reason: int = d.UNSPECIFIED) -> None:
        """Close from our side; an MQTT 5 client first hears why (a DISCONNECT with `reason`, or a CONNACK with
        it when its CONNECT is what is refused)."""
        if not self.writer.is_closing():
            dialect = self.dialect
            self.writer.write(
                dialect.disconnect(reason) if self.session is not None else dialect.refuse_connect(reason)
            )
        shut(self.writer)

    def end_login(self) -> None:
        """Its app may no longer log in (a reload): closed, without its will (which would publish for that app)."""
        self._graceful = True
        self.close(d.NOT_AUTHORIZED)

    def context(self) -> Context:
        """What a log line about this client carries: its client id (once known) and address."""
        return {"client": self.client_id, "peer": self.peer}

    def _unanswered(self, exc: StorageError | None) -> None:
        """An answer's wait failed: a session's save on a full disk (a traceback each time, before), or a bug."""
        if exc is not None:
            context = self.context()
            self.endpoint.log_input("storage", "closing client %s unanswered: %s", self.name, exc, context=context)
        self.close()

    async def run(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        try:
            connect = await self._handshake()
            if connect is None:
                return
            tasks = [asyncio.create_task(self._answers.run()), asyncio.create_task(self._pump())]
            self.wake.set()
            await self._read_loop(connect.keepalive)
        except MalformedPacketError as exc:
            # Once every 10 s (`log_input`): any process reaching the port wrote a line per connection.
            self.endpoint.log_input("malformed", "closing client %s: %s", self.name, exc, context=self.context())
            self.close(d.TOPIC_ALIAS_INVALID if "topic alias" in str(exc) else d.MALFORMED)
        except TimeoutError:
            log.info("client %s sent nothing within 1.5 times its keepalive: closing it", self.name,
                     extra=self.context())  # fmt: skip
            self.close(d.KEEP_ALIVE_TIMEOUT)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            shut(self.writer)
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
            self.endpoint.detach(self)
            self.closed.set()
            if self._will is not None and not self._graceful and not self.endpoint.stopping:
                await self._publish_will(self._will)

    async def _read_packets(self) -> list[tuple[int, bytes]]:
        data = await self.reader.read(65536)
        if not data:
            raise ConnectionResetError
        if self.session is None and not self._framer.buffered and data[0] != CONNECT_BYTE:
            raise _NotMqttError
        return self._framer.feed(data)

    async def _handshake(self) -> p.Connect | None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                frames: list[tuple[int, bytes]] = []
                while not frames:
                    frames = await self._read_packets()
        except (TimeoutError, ConnectionError):
            log.debug("connection from %s closed before CONNECT", self.peer)
            return None
        except _NotMqttError:
            # These lines, once every 10 s each (`log_input`): whatever reaches the port wrote one per connection.
            msg = "connection from %s did not start with an MQTT CONNECT: closed"
            self.endpoint.log_input("not_mqtt", msg, self.peer, level=logging.INFO)
            return None
        first, body = frames[0]
        connect = p.decode(first, body)
        assert isinstance(connect, p.Connect)
        settings = self.endpoint.settings
        self.dialect = dialect_of(connect, settings.window, settings.max_packet)
        connect = d.whole_connect(self.dialect, first, body, connect)
        self._client_max = connect.max_packet
        version = p.PROTOCOLS.get((connect.protocol, connect.level))
        if version is None:
            if connect.protocol not in ("MQTT", "MQIsdp"):
                self.endpoint.log_input(
                    "not_mqtt_protocol", "connection from %s is not MQTT (protocol %r): closed", self.peer,
                    connect.protocol, level=logging.INFO,
                )  # fmt: skip
                return None
            self._refuse(ConnackCode.BAD_PROTOCOL_VERSION, f"protocol level {connect.level}")
            return None
        client_id = connect.client_id
        assigned = None
        if not client_id:
            if connect.level != 5 and (not connect.clean or connect.level == 3):
                self._refuse(ConnackCode.IDENTIFIER_REJECTED, "an empty client id needs clean session")
                return None
            client_id = assigned = "auto-" + secrets.token_hex(8)
        if not await self.endpoint.authenticate(connect.username, connect.password):
            code = ConnackCode.BAD_CREDENTIALS if connect.username else ConnackCode.NOT_AUTHORIZED
            self._refuse(code, f"login as {connect.username!r} refused")
            return None
        self.principal = connect.username if self.endpoint.settings.logins else None
        if connect.will is not None and not may_publish(self.principal, connect.will.topic):
            self._refuse(ConnackCode.NOT_AUTHORIZED, f"will topic {connect.will.topic!r} is not the app's")
            return None
        self.name = f"{client_id}@{self.peer}"
        self.client_id = client_id
        present = await self.endpoint.attach(self, connect, client_id)
        if present is None:
            self._refuse_session()
            return None
        self._will = connect.will
        session = self.session
        assert session is not None
        # Each connection's own: a resumed session once kept the last one given (3.1.1 gives none).
        session.window = settings.window if connect.receive_max is None else min(settings.window, connect.receive_max)
        granted = self.endpoint.granted_expiry_s(connect)
        self.writer.write(self.dialect.connack(present, ConnackCode.ACCEPTED, assigned, granted))
        for packet_id in sorted(session.released):
            self.writer.write(self.dialect.ack(Type.PUBREL, packet_id))
        for first_byte, packet_body in frames[1:]:
            await self._frame(first_byte, packet_body)
        return connect

    def _refuse_session(self) -> None:
        """No room for a new persistent session, or no disk: 3.1.1 CONNACK 3 server unavailable, MQTT 5 0x97."""
        if self.dialect.version == 5:
            self.writer.write(self.dialect.refuse_connect(d.QUOTA_EXCEEDED))
        else:
            self.writer.write(self.dialect.connack(False, ConnackCode.SERVER_UNAVAILABLE))

    def _refuse(self, code: ConnackCode, why: str) -> None:
        self.endpoint.log_input(
            "refused",
            "refused client from %s: %s (CONNACK %d)",
            self.peer,
            why,
            int(code),
            level=logging.INFO,
            context=self.context(),
        )
        self.writer.write(self.dialect.connack(False, code))

    async def _read_loop(self, keepalive: int) -> None:
        loop = asyncio.get_running_loop()
        grace = keepalive * 1.5 if keepalive else None
        async with asyncio.timeout(grace) as deadline:
            while True:
                for first, body in await self._read_packets():
                    await self._frame(first, body)
                if grace is not None:
                    deadline.reschedule(loop.time() + grace)
                await self._answers.room()
                await self.endpoint.intake.room_to_read()

    async def _frame(self, first: int, body: bytes) -> None:
        if not first & p.CUT:
            await self._handle(self.dialect.decode(first, body))
            return
        full = self._framer.cut_sizes.popleft()  # a PUBLISH over the limit, of which `body` is the head
        cut = self.dialect.decode(first & 0xFF, body)
        if not (isinstance(cut, p.Publish) and self.endpoint.intake.is_intake(cut.topic)):
            raise MalformedPacketError(f"packet of {full:,} bytes is over the {self._framer.max_packet:,}-byte limit")
        self._publish(cut, full - (len(body) - len(cut.payload)))

    async def _handle(self, packet: p.Packet) -> None:
        session = self.session
        assert session is not None
        if isinstance(packet, p.Publish):
            self._publish(packet)
        elif isinstance(packet, p.PacketIdOnly):
            if packet.type is Type.PUBACK:
                if session.puback(packet.packet_id):
                    self.wake.set()
            elif packet.type is Type.PUBREC:
                if session.pubrec(packet.packet_id):
                    self.writer.write(self.dialect.ack(Type.PUBREL, packet.packet_id))
                self.wake.set()
            elif packet.type is Type.PUBCOMP:
                session.pubcomp(packet.packet_id)
                self.wake.set()
            elif packet.type is Type.PUBREL:
                self._answers.add(
                    qos2_in.release(session, packet.packet_id, self.endpoint.sessions_port),
                    self.dialect.ack(Type.PUBCOMP, packet.packet_id),
                )
            else:
                raise MalformedPacketError(f"a client does not send {packet.type.name}")
        elif isinstance(packet, p.Connect):
            raise MalformedPacketError("a second CONNECT on one connection")
        elif isinstance(packet, p.Subscribe):
            await self._subscribe(session, packet)
        elif isinstance(packet, p.Unsubscribe):
            for topic_filter in packet.filters:
                session.subscriptions.pop(topic_filter, None)
            session.note_subscriptions()
            self.endpoint.status_interest_changed(session.client_id)
            saved = self._save(session)
            self._answers.add(saved, self.dialect.unsuback(packet.packet_id, len(packet.filters)))
        elif isinstance(packet, p.Bare) and packet.type is Type.PINGREQ:
            self.writer.write(self.dialect.pingresp())
        elif isinstance(packet, p.Bare) and packet.type is Type.DISCONNECT:
            if packet.session_expiry and not session.persistent:
                # MQTT 5 [MQTT-3.14.2-2]: a session that ends with its connection cannot be kept from its
                # DISCONNECT; not a valid DISCONNECT, so the will goes too.
                log.info("client %s asked in its DISCONNECT to keep a session it did not keep: closing it", self.name,
                         extra=self.context())  # fmt: skip
                self.close(d.PROTOCOL_ERROR)
                raise ConnectionResetError
            self.expiry_on_leave = packet.session_expiry
            if packet.reason != d.DISCONNECT_WITH_WILL:  # MQTT 5 lets a client leave with its will sent
                self._graceful = True
                self._will = None
            raise ConnectionResetError
        else:
            raise MalformedPacketError(f"a client does not send {type(packet).__name__} here")

    def _publish(self, packet: p.Publish, size: int | None = None) -> None:
        """`size`: the payload's full size when `packet` holds only its head."""
        session = self.session
        assert session is not None
        topic, qos = packet.topic, packet.qos
        intake = self.endpoint.intake
        ready: asyncio.Future[Any] | None = None
        verdict: d.Verdict | None = None  # a refusal of a topic the client may not publish to
        if qos2_in.is_resend(session, packet):
            assert packet.packet_id is not None
            ready = session.incoming_qos2[packet.packet_id]
        elif intake.is_intake(topic):
            taken = qos2_in.key(session, packet)
            ready = intake.submit(
                topic, packet.payload, principal=self.principal, expiry_s=packet.expiry_s, size=size, taken=taken
            )
            if qos == 2 and self.dialect.version == 5:  # a PUBREC that refuses frees its packet id
                ready = qos2_in.freed_if_refused(session, packet, ready, self.endpoint.sessions_port)
        elif (why := refusal(self.principal, topic)) is not None:  # acknowledged as refused (MQTT 5: 0x87)
            verdict = d.Verdict(d.NOT_AUTHORIZED, why)
            if is_status_topic(topic):  # dropped and logged there, as a will on one is
                self.endpoint.route(topic, packet.payload, qos, packet.retain, self.name)
            else:  # dropped without a word, and an MQTT 5 client told it was taken
                self.endpoint.log_input("acl", "client %s may not publish to %r: %s; dropped", self.name, topic[:100],
                                        why, level=logging.INFO, context=self.context())  # fmt: skip
        elif (app := intake.replay_app(topic)) is not None:
            after = replay_after(packet.payload)
            if after is None:
                self.endpoint.log_input(
                    "replay",
                    'client %s: a replay request is {"after": SEQ}, not %r',
                    self.name,
                    packet.payload[:100],
                    context={**self.context(), "app": app},
                )
            else:
                self._replay = Replay(app, after)
                self.wake.set()
        else:
            self.endpoint.route(
                topic, packet.payload, qos, packet.retain, self.name, packet.expiry_s, packet.props, self.client_id
            )
        if qos:
            assert packet.packet_id is not None
            kind, packet_id, dialect = (Type.PUBACK if qos == 1 else Type.PUBREC), packet.packet_id, self.dialect
            if qos == 2:  # shielded: this connection's end cancels what its answers await, and a resend awaits it too
                if verdict is None or dialect.version != 5:  # (one refused in its PUBREC is done: its id is free)
                    session.incoming_qos2[packet_id] = ready
                ready = None if ready is None else asyncio.shield(ready)
            if dialect.version == 5:  # its acknowledgement can name a refusal: made once the commit is done
                verdict_of = d.intake_verdict if verdict is None else lambda _result: verdict
                self._answers.add(ready, lambda result: dialect.ack(kind, packet_id, verdict_of(result)))
            else:
                self._answers.add(ready, dialect.ack(kind, packet_id))
        elif ready is not None:
            self._answers.add(ready, b"")  # QoS 0 into the intake: nothing to send, but keep the order

    async def _subscribe(self, session: Session, packet: p.Subscribe) -> None:
        if not session.wants_statuses:  # it has looked at every event so far (its pump is not woken for them)
            session.status.passed(self.endpoint.feed.head)
        codes: list[int] = []
        granted: list[tuple[str, int]] = []
        context = self.context()
        for topic_filter, options in packet.filters:
            shared = topic_filter.startswith("$share/")  # not offered (CONNACK says so): it would match nothing
            if shared or not valid_filter(topic_filter):
                why = "shared subscriptions are not supported" if shared else "not a valid filter"
                self.endpoint.log_input("filter", "client %s may not subscribe to %r: %s", self.name,
                                        topic_filter[:100], why, level=logging.INFO, context=context)  # fmt: skip
                codes.append(d.SHARED_NOT_SUPPORTED if shared else d.TOPIC_FILTER_INVALID)
                continue
            if not may_subscribe(self.principal, topic_filter):
                self.endpoint.log_input("filter", "client %s may not subscribe to %r", self.name, topic_filter[:100],
                                        level=logging.INFO, context=context)  # fmt: skip
                codes.append(d.NOT_AUTHORIZED)
                continue
            if not session.has_room_for(topic_filter):
                self.endpoint.log_input("filter", "client %s holds %d subscriptions, the most a session may",
                                        self.name, MAX_SUBSCRIPTIONS, level=logging.INFO, context=context)  # fmt: skip
                codes.append(d.QUOTA_EXCEEDED)
                continue
            codes.append(options & QOS_BITS)
            if session.subscribe(topic_filter, options):
                granted.append((topic_filter, options & QOS_BITS))
        session.note_subscriptions()
        self.endpoint.status_interest_changed(session.client_id)

        def deliver_retained() -> None:
            for topic_filter, qos in granted:
                self.endpoint.retained_for(session, topic_filter, qos)
            self.wake.set()

        saved = self._save(session)
        self._answers.add(saved, self.dialect.suback(packet.packet_id, codes), deliver_retained)

    def _save(self, session: Session) -> asyncio.Future[Any] | None:
        if not session.persistent:
            return None
        return asyncio.ensure_future(self.endpoint.sessions_port.save(self.endpoint.record(session), if_changed=True))

    async def _pump(self) -> None:
        """Send what the session has for the client: statuses read from the feed, then queued messages."""
        session = self.session
        assert session is not None
        feed = self.endpoint.feed
        while True:
            await self.wake.wait()
            self.wake.clear()
            try:
                await self._fill(session, feed)
            except StorageError as exc:  # a full disk fails the reads grouped with its commits: try again
                self.endpoint.log_input("status_read", "statuses to %s wait for the store: %s", self.name, exc)
                asyncio.get_running_loop().call_later(STATUS_RETRY_S, self.wake.set)
            for send in session.take(time.monotonic()):
                data = self.dialect.publish(send)
                if self._client_max is not None and len(data) > self._client_max:
                    self._not_sent(session, send, len(data))
                    continue
                self.writer.write(data)
            transport = self.writer.transport
            if transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                await self.writer.drain()

    async def _fill(self, session: Session, feed: StatusFeed) -> None:
        """Queue the statuses the session has room for, then the next part of a replay request."""
        if await queue_statuses(session, feed):
            self.wake.set()  # there may be more
        replay = self._replay
        if replay is not None and len(session.queue) < REPLAY_CHUNK:
            if await queue_replay(session, replay, self.endpoint.sessions_port.read_app_statuses):
                log.info("client %s asked for the statuses of %s again: %d sent", self.name, replay.app, replay.sent,
                         extra={**self.context(), "app": replay.app})  # fmt: skip
                self._replay = None
            else:
                self.wake.set()

    def _not_sent(self, session: Session, send: Send, size: int) -> None:
        """A message over the client's maximum packet size is dropped as if delivered [MQTT-3.1.2-25]: sent, the
        client takes it as a protocol error and leaves, to be sent it again when it is back (a status for ever)."""
        session.discard(send)
        self.endpoint.log_input(
            "client_max", "client %s: a message of %d bytes on %r is over its maximum packet size (%s): not sent",
            self.name, size, send.message.topic[:100], self._client_max, context=self.context(),
        )  # fmt: skip

    async def _publish_will(self, will: p.Will) -> None:
        intake = self.endpoint.intake
        if intake.is_intake(will.topic):
            await intake.receive(will.topic, will.payload, principal=self.principal)
        else:
            self.endpoint.route(will.topic, will.payload, will.qos, will.retain, self.name, origin=self.client_id)
