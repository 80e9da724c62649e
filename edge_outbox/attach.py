"""Attach mode: take intents from a broker the site already runs (e.g. Mosquitto) instead of embedding one.

The outbox subscribes to outbox/+/+ with a persistent session (clean session off) and acknowledges
each message to the broker only after committing it, in the order the messages arrived
[MQTT-4.6.0-2]. The app's own PUBACK comes from that broker, before the outbox has seen the message,
so in this mode the app's durability signal is the `accepted` status, not the PUBACK (see README).

Statuses go to the broker at QoS 1 in sequence order; the broker is one more status consumer, whose
position (every status up to it acknowledged by the broker) is kept under STATUS_KEY, so a restart
sends again what the broker may not have. After a lost connection the statuses not yet acknowledged
are read again from that position. A replay request (`{"after": SEQ}` on outbox/{app}/replay) is
acknowledged, not taken, and the app's stored statuses after SEQ are published to the broker again. So is
another outbox's hello on PEER_TOPIC, which is named as an error (edge_outbox.attach_peers). The broker's count of
messages it dropped over its queue limits is read from $SYS and named (edge_outbox.attach_drops).

Whatever the broker sends is answered: a message too large to take is cut as it arrives and refused
(too_large), QoS 0 messages count towards MAX_UNCOMMITTED like QoS 1 ones, and a stop acknowledges what
it took once committed before it disconnects, so the broker sends again only what was not taken. A copy the
broker sends again (DUP) of a message taken on a connection that ended is answered by its commit (attach_carried).

The client is asyncio on the endpoints' codecs, MQTT 5 (the `mqtt5` package) and, with a broker that speaks
only that, 3.1.1 (`intent_contract.mqtt_packets`): edge_outbox.attach_wire. Through MQTT 5 an app's message
expiry reaches the outbox (the intent's deadline, as on the endpoint), the broker's receive maximum bounds the
statuses in flight, its server keep alive is used, and a status it refuses is named. One task reads and hands
each message to the intake, the acknowledgements one commit releases go out in one write, and reading pauses
while MAX_UNCOMMITTED messages wait for their commit, so a backlog stays with the broker. It replaced paho,
whose thread and one-byte reads of each packet's header cost more than the intake did (bench/findings.md
F22). With `mqtts://` the connection is TLS, the broker's certificate and name always verified
(`--attach-ca`, or the system's trust store).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable
from typing import Any

from edge_outbox.attach_carried import Carried
from edge_outbox.attach_drops import DROPPED_TOPIC, DROPS_SUBSCRIBE_ID, BrokerDrops
from edge_outbox.attach_link import READ_CHUNK, Link, Received, RetainedNames, first_packets, tls_context, why
from edge_outbox.attach_peers import PEER_TOPIC, Peers, greet, hello
from edge_outbox.attach_replays import ReadAppStatuses, Replays
from edge_outbox.attach_wire import Refused, wire_of
from edge_outbox.errors import AttachRefusedError, AttachVersionError, StorageError
from edge_outbox.intake import Intake
from edge_outbox.intake_rules import CUT_KEEP, MAX_PAYLOAD_BYTES, TOPIC_ROOT
from edge_outbox.mqtt.session import StatusCursor
from edge_outbox.settings import AttachTarget
from edge_outbox.status import STATUS_RETRY_S, StatusFeed
from intent_contract import mqtt_packets as p
from intent_contract.backoff import compute_backoff
from intent_contract.errors import MalformedPacketError
from intent_contract.logs import LogThrottle, left_out
from intent_contract.mqtt_packets import Type

log = logging.getLogger(__name__)

INTAKE_FILTER = f"{TOPIC_ROOT}/+/+"
STATUS_FILTER = f"{TOPIC_ROOT}/+/status/#"  # what the outbox writes statuses to, for the words of a refusal
STATUS_WINDOW = 1000  # statuses published to the broker and not yet acknowledged by it
KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 10.0
RETRY_MIN_S, RETRY_MAX_S = 1.0, 30.0
# A connection that lasted this long starts the backoff over. One the broker ends sooner (another client
# taking over the same client id, a message the broker relays that we cannot take) counts as a failure: when
# every CONNACK started it over, such a broker was connected to about twice a second for ever, a line each time.
STABLE_S = 60.0
# The largest PUBLISH the intake may take whole: its 256 KiB payload, the longest topic, a packet id and the
# fixed header. The head of a larger one (CUT_KEEP: its topic, packet id and as much of its payload as a refusal
# keeps) is taken and the rest dropped as it arrives, and it is stored as refused (too_large) and acknowledged.
# Before, a packet over 16 MiB closed the connection; the broker sent it again on the next, for ever, and no
# message behind it was taken.
MAX_PACKET = 1 + 4 + 2 + 0xFFFF + 2 + MAX_PAYLOAD_BYTES
# Messages read and not yet committed: reading pauses beyond this, so TCP holds the broker back (it
# keeps the rest in its session) instead of the outbox holding a backlog in memory.
MAX_UNCOMMITTED = 1000
# A stop waits at most this long for the commits of what was taken, so their acknowledgements go out first.
STOP_COMMIT_S = 5.0
SUBSCRIBE_ID = 1  # the intake's SUBSCRIBE, once per connection (attach_link.SUBSCRIBE_IDS)
# PINGREQs after which a connection on which the broker sent no PUBLISH at all, not even our own hello, is named:
# a broker whose ACL does not let us read outbox/+/+ grants the subscription and sends nothing (Mosquitto).
NOTHING_HEARD_PINGS = 2


class AttachedClient:
    """An MQTT 5 (or 3.1.1) client on the event loop: connects, keeps its session, reconnects with backoff."""

    def __init__(
        self,
        target: AttachTarget,
        intake: Intake,
        feed: StatusFeed,
        position: int,
        read_app_statuses: ReadAppStatuses | None = None,
        *,
        first: bool = False,  # no attach on this data dir before: `position` is where it starts, not one acknowledged
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._target = target
        self._replays = Replays(read_app_statuses)
        self._tls = tls_context(target) if target.tls else None
        self._intake = intake
        self._feed = feed
        self.status = StatusCursor(position)
        self._wake = asyncio.Event()
        self._link: Link | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self._connected_at = 0.0  # time.monotonic() of the last CONNACK
        self._clock = clock  # the outbox's (edge_outbox.clock_steps), in seconds: a step moves `down_since` with it
        self.down_since: float | None = clock()  # since when no connection is up (None: attached), for health
        # Whether the broker holds a session for us, as far as we know: once attached, or (at start) once the broker
        # acknowledged a status, which it did on a session of ours.
        self._had_session = position > 0 and not first
        self._retained = RetainedNames()
        self._carried = Carried()  # taken on a connection that ended, not acknowledged: the broker sends them again
        self._drops = BrokerDrops()  # what the broker dropped over its queue limits (edge_outbox.attach_drops)
        self._peers = Peers(target.client_id)
        self.fault = ""  # what is wrong with a connection that is up, for health: the broker sends us nothing
        self._store_log = LogThrottle(10.0)
        self._refused_log = LogThrottle(10.0)  # statuses the broker refused (MQTT 5 PUBACK reason codes)
        self.version = 5  # the MQTT version to attach with: 3.1.1 once the broker refused 5 (edge_outbox.attach_wire)
        feed.listen(self._wake.set)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="attach")
        log.info("attaching to %s as %s", self._target.url, self._target.client_id)

    async def stop(self) -> None:
        link = self._link
        if link is not None and not link.writer.is_closing():
            link.stopping = True
            await link.settle(STOP_COMMIT_S)
        if link is not None and not link.writer.is_closing():
            link.writer.write(p.encode(p.Bare(Type.DISCONNECT)))  # leave the session cleanly: no reconnect race
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        """Connect, serve the connection until it ends, wait, and connect again."""
        failures = 0
        while True:
            try:
                await self._connection()
            except AttachVersionError as exc:
                log.warning("%s: attaching with MQTT 3.1.1, through which an app's message expiry does not reach "
                            "the outbox (put ttl in the intent)", exc)  # fmt: skip
                self.version = 4
                continue  # at once: the broker answered
            except AttachRefusedError as exc:
                log.error("attach broker refused the connection: %s", exc)
            except ssl.SSLError as exc:  # before OSError, of which it is one: not a broker that is away
                log.error("TLS with the attach broker %s failed: %s", self._target.url, exc)
            except (OSError, EOFError, TimeoutError, MalformedPacketError) as exc:
                if self.connected.is_set():
                    lasted = time.monotonic() - self._connected_at
                    log.warning(
                        "attach broker connection lost after %d s (%s); reconnecting%s",
                        lasted,
                        why(exc),
                        f" (is another client attached as {self._target.client_id}?)"
                        if isinstance(exc, EOFError) and lasted < STABLE_S
                        else "",
                    )
                elif failures == 0:
                    log.warning("cannot reach the attach broker (%s); retrying until it answers", why(exc))
            except Exception:  # a defect: it ended the task silently, and the outbox looked attached and took nothing
                log.exception("attach link failed unexpectedly; reconnecting")
            if self.connected.is_set():
                self.connected.clear()
                self.down_since = self._clock()
                if time.monotonic() - self._connected_at >= STABLE_S:
                    failures = 0
            failures += 1
            await asyncio.sleep(compute_backoff(failures, base=RETRY_MIN_S, cap=RETRY_MAX_S, jitter=random.random()))

    async def _connection(self) -> None:
        t = self._target
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(t.host, t.port, ssl=self._tls, server_hostname=t.host if self._tls else None),
            CONNECT_TIMEOUT_S,
        )
        link = Link(writer, wire := wire_of(self.version))
        framer = p.CuttingFramer(MAX_PACKET, CUT_KEEP)
        tasks: list[asyncio.Task[None]] = []
        try:
            greeting = wire.publish(PEER_TOPIC, hello(t.client_id, answer=False), 0, None)  # heard by us
            writer.write(wire.connect(t, KEEPALIVE_S, MAX_UNCOMMITTED) + wire.subscribe(SUBSCRIBE_ID, INTAKE_FILTER)
                         + greeting + wire.subscribe(DROPS_SUBSCRIBE_ID, DROPPED_TOPIC, 0))  # fmt: skip
            first = await asyncio.wait_for(first_packets(reader, framer), CONNECT_TIMEOUT_S)
            connack = wire.decode(first[0][0] & 0xFF, first[0][1])
            if not isinstance(connack, p.Connack):
                raise MalformedPacketError(f"expected CONNACK, got {type(connack).__name__}")
            if connack.code != 0:
                raise AttachRefusedError(wire.refusal(connack.code))
            link.window = min(STATUS_WINDOW, wire.receive_max)  # MQTT 5: the broker's receive maximum
            link.keepalive = wire.server_keepalive or KEEPALIVE_S  # MQTT 5: the broker's, which we must use
            if not connack.session_present and self._had_session:
                log.warning(
                    "the attach broker had no session for %s (it lost it: restarted without persistence?): what was "
                    "published while the outbox was not connected was not kept for it",
                    t.client_id,
                )
                self._carried.forget()  # it sends nothing again, and its packet ids start over
            self._had_session = True
            self._peers.connected()
            self._link = link
            self._connected_at = time.monotonic()
            self.down_since = None
            self.status.rewind()  # statuses not acknowledged on an earlier connection are read again
            self.connected.set()
            self._wake.set()
            tasks = [
                asyncio.create_task(self._publish_statuses(link), name="attach-statuses"),
                asyncio.create_task(self._keepalive(link), name="attach-keepalive"),
            ]
            for packet in first[1:]:
                self._handle(link, framer, *packet)
            while True:
                if len(link.received) >= MAX_UNCOMMITTED:
                    link.room.clear()
                    await link.room.wait()
                data = await reader.read(READ_CHUNK)
                if not data:
                    raise EOFError("the broker closed the connection")
                if link.stopping:  # not taken, so not acknowledged: the broker sends it again next time
                    await asyncio.Event().wait()  # until stop() cancels this task
                link.last_heard = time.monotonic()
                for packet in framer.feed(data):
                    self._handle(link, framer, *packet)
                # Read no more while the broker does not take what we write (acknowledgements, one per message):
                # a broker that sent and never read grew the outbox's write buffer by all it sent, and the link
                # stayed up. Not read, it is not heard either, and the keepalive drops it.
                await writer.drain()
        finally:
            self._link = None
            self._carried.keep(link)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _handle(self, link: Link, framer: p.CuttingFramer, first: int, body: bytes) -> None:
        if first & p.CUT:  # a PUBLISH over MAX_PACKET, of which `body` is the head
            cut = link.wire.decode(first & 0xFF, body)
            assert isinstance(cut, p.Publish)
            self._received(link, cut, framer.cut_sizes.popleft() - (len(body) - len(cut.payload)))
            return
        packet = link.wire.decode(first, body)
        if isinstance(packet, p.Publish):
            self._received(link, packet, None)
        elif isinstance(packet, Refused) or (isinstance(packet, p.PacketIdOnly) and packet.type is Type.PUBACK):
            if isinstance(packet, Refused) and (not_logged := self._refused_log.allow(time.monotonic())) is not None:
                who = f"user {self._target.username!r}" if self._target.username else "this client"
                acl = f"; let {who} write {STATUS_FILTER}" if packet.reason.startswith("not authorized") else ""
                log.error("the attach broker refused a status (%s): apps do not hear it%s%s",
                          packet.reason, acl, left_out(not_logged))  # fmt: skip
            seq = link.statuses.pop(packet.packet_id, None)
            if seq is not None:
                if seq:
                    self.status.closed(seq)
                self._wake.set()
        elif isinstance(packet, p.Suback) and packet.packet_id == DROPS_SUBSCRIBE_ID:
            pass  # refused or not, a broker without $SYS or an ACL that keeps it from us sends nothing
        elif isinstance(packet, p.Suback):
            if any(code >= p.SUBACK_FAILURE for code in packet.codes):
                raise AttachRefusedError(f"subscribing to {INTAKE_FILTER} was refused")
            log.info("attached; subscribed to %s (MQTT %s)", INTAKE_FILTER, "5" if link.wire.version == 5 else "3.1.1")
            if packet.codes == (0,):  # the intents still flow, without the promises of attach mode: said each time
                log.error(
                    "the attach broker granted %s at QoS 0 only (Mosquitto: max_qos): it keeps no intent for the "
                    "outbox while it is away and forgets each once sent, so intents are lost; allow QoS 1",
                    INTAKE_FILTER,
                )
        elif isinstance(packet, p.Bare) and packet.type is Type.PINGRESP:
            pass
        else:
            raise MalformedPacketError(f"the broker sent {type(packet).__name__} {getattr(packet, 'type', '')}")

    def _received(self, link: Link, packet: p.Publish, size: int | None) -> None:
        """`size`: the payload's full size, when `packet` holds only its head."""
        if packet.topic == DROPPED_TOPIC:  # QoS 0, nothing to acknowledge; and not heard on outbox/+/+
            self._drops.heard(packet.payload)
            return
        link.heard_publish = True
        self.fault = ""
        if packet.qos == 2:  # we subscribed at QoS 1; a broker may not send more [MQTT-3.8.4-6]
            raise MalformedPacketError("the broker sent a QoS 2 message on a QoS 1 subscription")
        future: asyncio.Future[Any]
        taken = None
        app = Intake.replay_app(packet.topic)
        peer = packet.topic == PEER_TOPIC
        if app is not None and not packet.retain:
            if self._replays.asked(app, packet.payload):
                self._wake.set()
        elif peer and not packet.retain:
            greet(self._peers, link, packet.payload)
        if packet.retain or app is not None or peer or not packet.payload:  # acknowledged in turn, not taken
            # RETAIN=1 marks a copy sent because we subscribed [MQTT-3.3.1-8]; a message on the subscription
            # we hold comes with RETAIN=0 [MQTT-3.3.1-9]. The broker replays a retained intent on every
            # SUBSCRIBE (one per connection): taken, each replay was a new intent, the email sent again.
            # An empty message is how a retained one is cleared (the broker relays it with RETAIN=0): no intent
            # either. Taken, it was stored as a rejected intent (bad_json) whose status no app waited for.
            if packet.retain or not packet.payload:
                self._retained.name(packet.topic, cleared=not packet.payload)
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
        else:
            taken = (packet.topic, packet.payload, size)
            carried = self._carried.commit_of(packet, taken) if self._carried else None  # a copy of one taken
            if carried is None:
                future = self._intake.submit(packet.topic, packet.payload, expiry_s=packet.expiry_s, size=size)
            else:
                future = carried
        if packet.qos == 1 or not future.done():
            # A QoS 0 intent waits in the queue too, with nothing to acknowledge: it counts towards
            # MAX_UNCOMMITTED. Uncounted, an app publishing at QoS 0 (mosquitto_pub's default) while commits
            # were held (a full queue or disk) grew the outbox's memory by every byte it sent.
            link.received.append(Received(packet.packet_id, future, taken))
            if not link.watching:
                self._watch(link, future)

    def _watch(self, link: Link, oldest: asyncio.Future[Any]) -> None:
        """Acknowledge once `oldest` is committed. Acknowledgements go from the left, so nothing else can
        release one: one callback at a time, not one per message. It runs after the whole commit's results
        are set (the intake sets them in one pass, and a callback runs on the loop's next turn)."""
        link.watching = True
        oldest.add_done_callback(lambda _done: self._acknowledge(link))

    def _acknowledge(self, link: Link) -> None:
        link.watching = False
        if link is not self._link or link.writer.is_closing():
            return  # the broker sends these again on the next connection
        acks = bytearray()
        received = link.received
        while received and received[0].done.done():
            head = received.popleft()
            if head.done.cancelled() or head.done.exception() is not None:
                # Not acknowledged, and nothing after it may be before it: the broker sends them again.
                log.error("attach intake failed: %s; reconnecting", head.done.exception() or "cancelled")
                link.writer.close()
                return
            if head.packet_id is not None:
                acks += p.encode_ack(Type.PUBACK, head.packet_id)
                if head.taken is not None:
                    link.acked.append((head.packet_id, hash(head.taken)))
        if received:
            self._watch(link, received[0].done)
        if acks:
            link.writer.write(acks)
        if len(received) < MAX_UNCOMMITTED:
            link.resume()

    async def _publish_statuses(self, link: Link) -> None:
        """Publish statuses in order, at most `link.window` unacknowledged, one write per read. A read the store fails
        (a full disk fails each group commit, and the reads in it) is tried again: it ended this task without a word,
        and no status went to the broker until the connection ended."""
        cursor = self.status
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                room = min(STATUS_WINDOW - cursor.open, link.window - len(link.statuses))
                events = await self._feed.read(cursor.sent, room) if room > 0 else []
                if link.writer.is_closing():
                    return
                if events:
                    out, awaited = link.publish_statuses(events)
                    link.writer.write(out)
                    for event in events:
                        (cursor.opened if event.seq in awaited else cursor.passed)(event.seq)  # QoS 0, or not sent
                    self._wake.set()
                    if not link.wire.max_qos:
                        await link.writer.drain()  # no PUBACK to wait for: the broker's reading paces them
                if self._replays and len(link.statuses) < link.window:
                    await self._replays.serve(link, link.window - len(link.statuses))
                    self._wake.set()
            except StorageError as exc:
                if (not_logged := self._store_log.allow(time.monotonic())) is not None:
                    log.warning("statuses to the attach broker wait for the store: %s%s", exc, left_out(not_logged))
                await asyncio.sleep(STATUS_RETRY_S)
                self._wake.set()

    async def _keepalive(self, link: Link) -> None:
        """PINGREQ every half keepalive; a broker silent for 1.5 keepalives while we read (or wait for it to read
        what we wrote) is gone [MQTT-3.1.2-24]. Aborted, not closed: a close waits until the broker has read what
        is buffered, and one that reads nothing never does."""
        while True:
            await asyncio.sleep(link.keepalive / 2)
            if link.room.is_set() and time.monotonic() - link.last_heard > link.keepalive * 1.5:
                log.warning(
                    "attach broker silent (or not reading) for %d s: dropping the connection", int(link.keepalive * 1.5)
                )
                link.writer.transport.abort()
                return
            link.pings += 1
            if link.pings == NOTHING_HEARD_PINGS and not link.heard_publish:
                self.fault = f"the site broker sends nothing on {INTAKE_FILTER}, not even the outbox's own hello (ACL?)"
                log.error(
                    "the attach broker sent nothing on %s in %d s, not even the outbox's own hello on %s: it does "
                    "not let %s read %s (or write %s), and the intents apps publish are acknowledged to them and "
                    "never reach the outbox; allow both (Mosquitto: acl_file)",
                    INTAKE_FILTER, int(link.keepalive / 2 * NOTHING_HEARD_PINGS), PEER_TOPIC,
                    f"user {self._target.username!r}" if self._target.username else "this client",
                    INTAKE_FILTER, PEER_TOPIC,
                )  # fmt: skip
            link.writer.write(p.encode(p.Bare(Type.PINGREQ)))
