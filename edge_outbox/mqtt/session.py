"""One client's MQTT session: subscriptions, messages waiting and in flight, packet ids. Pure, no I/O.

The server moves bytes; this decides what to send next and what an acknowledgement releases. Status
messages carry the sequence number of their stored event: `StatusCursor` turns the acknowledgements
of those into the position up to which the client has them all, which is what a persistent session
keeps across restarts (statuses are re-read from the database from there, never held here for an
absent client).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from edge_outbox.mqtt.topics import STATUS_SHAPE, matches, may_match, may_subscribe

MAX_PACKET_ID = 65535
# Subscriptions one session may hold (docs/edge.md): a persistent session's are written to the database on
# the thread that commits every app's intents, and each status event is matched against them.
MAX_SUBSCRIPTIONS = 100
# Messages other than statuses kept for a session (docs/edge.md), in count and in bytes (topic and payload):
# beyond either the oldest are dropped. A count alone let 10,000 messages of 1 MB wait for one absent app.
MAX_QUEUED = 10_000
MAX_QUEUED_BYTES = 8 << 20
# A subscription's options, as MQTT 5's SUBSCRIBE carries them in one byte (3.1.1: the QoS alone).
QOS_BITS = 0x03
NO_LOCAL = 0x04  # not the subscriber's own messages
RETAIN_AS_PUBLISHED = 0x08  # a message keeps its RETAIN flag
SEND_RETAINED_IF_NEW, SEND_RETAINED_NEVER = 0x10, 0x20  # retain handling 1 and 2 (0: retained sent at SUBSCRIBE)


def message_bytes(topic: str, payload: bytes) -> int:
    """What a kept message counts against a byte bound: its topic and payload."""
    return len(topic) + len(payload)


@dataclass(frozen=True, slots=True)
class Passed:
    """The properties of an MQTT 5 PUBLISH a broker passes on unaltered to subscribers [MQTT-3.3.2-4/15/16/17/20]:
    what they mean is the apps' own (a request's response topic and correlation data, user properties)."""

    payload_format: int = 0
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: tuple[tuple[str, str], ...] = ()

    def size(self) -> int:
        """What they count against a byte bound, with the message's topic and payload."""
        texts = [self.content_type or "", self.response_topic or "", *(t for kv in self.user_properties for t in kv)]
        return sum(map(len, texts)) + len(self.correlation_data or b"")


@dataclass(frozen=True, slots=True)
class Message:
    """A message to deliver to one session, at the QoS it will be delivered with."""

    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    seq: int = 0  # the status event it carries; 0 for any other message
    expires: float | None = None  # MQTT 5 message expiry: the monotonic time it is deleted at if not sent by then
    props: Passed | None = None  # MQTT 5: the publisher's properties to pass on

    def size(self) -> int:
        """What it counts against a session's byte bound."""
        return message_bytes(self.topic, self.payload) + (self.props.size() if self.props else 0)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What is kept of a persistent session between connections and across restarts."""

    client_id: str
    username: str | None
    subscriptions: dict[str, int]
    status_seq: int
    last_seen: int = 0  # ms since the epoch
    expiry_ms: int | None = None  # MQTT 5: the interval the client asked for, if below the outbox's
    taken: tuple[int, ...] = ()  # inbound QoS 2 packet ids stored with their intent, awaiting PUBREL (as loaded)


def left(message: Message, now: float) -> int | None:
    """The message expiry interval to send `message` with at `now`: what is left of it, in whole seconds (at least
    1: a message in flight is sent again whatever is left) [MQTT-3.3.2-6]."""
    return None if message.expires is None else max(1, math.ceil(message.expires - now))


def session_expiry_ms(asked_ms: int | None, server_ms: int) -> int:
    """How long a session outlives its client: what the client asked for (MQTT 5), at most the outbox's."""
    return server_ms if asked_ms is None else min(asked_ms, server_ms)


@dataclass(frozen=True, slots=True)
class Send:
    """A PUBLISH to write now."""

    message: Message
    packet_id: int | None
    dup: bool
    expiry_s: int | None = None  # MQTT 5: what is left of its message expiry interval, sent with it


class StatusCursor:
    """Tracks status messages handed out in sequence order; `position` is the last seq with nothing open before it."""

    __slots__ = ("_open", "position", "sent")

    def __init__(self, position: int) -> None:
        self.position = position  # every status up to here is acknowledged (or was not wanted)
        self.sent = position  # every status up to here has been looked at and queued if wanted
        self._open: dict[int, None] = {}  # queued or in flight, in seq order

    def passed(self, seq: int) -> None:
        """`seq` was looked at and not wanted (or sent at QoS 0)."""
        self.sent = max(self.sent, seq)
        if not self._open:
            self.position = self.sent

    def opened(self, seq: int) -> None:
        """`seq` was queued at QoS 1 and needs an acknowledgement."""
        self._open[seq] = None
        self.sent = max(self.sent, seq)

    def closed(self, seq: int) -> None:
        """`seq` was acknowledged."""
        self._open.pop(seq, None)
        self.position = next(iter(self._open)) - 1 if self._open else self.sent

    def rewind(self) -> None:
        """Forget what is open: it will be read again from `position` (after a disconnect)."""
        self._open.clear()
        self.sent = self.position

    @property
    def open(self) -> int:
        return len(self._open)


@dataclass(slots=True)
class Session:
    """A client's session; `persistent` sessions outlive their connection (clean session = 0)."""

    client_id: str
    persistent: bool
    username: str | None = None
    subscriptions: dict[str, int] = field(default_factory=dict)  # filter -> its options (QoS in QOS_BITS)
    status: StatusCursor = field(default_factory=lambda: StatusCursor(0))
    principal: str | None = None  # with app logins, the app it belongs to: nothing else of it is delivered
    window: int = 256  # QoS 1/2 messages in flight at once
    max_queued: int = MAX_QUEUED  # other messages kept for a session; the oldest are dropped beyond
    max_queued_bytes: int = MAX_QUEUED_BYTES  # and their bytes
    queued_bytes: int = 0  # of the messages other than statuses in `queue`
    queue: deque[Message] = field(default_factory=deque)
    inflight: dict[int, Message] = field(default_factory=dict)  # packet id -> PUBLISH awaiting PUBACK/PUBREC
    released: set[int] = field(default_factory=set)  # outbound QoS 2: PUBREL sent, awaiting PUBCOMP
    # Inbound QoS 2 taken, awaiting PUBREL: packet id -> what its PUBREC waits for (the commit's future, or None:
    # an id loaded from the database, taken before the outbox restarted).
    incoming_qos2: dict[int, Any] = field(default_factory=dict)
    resend: set[int] = field(default_factory=set)  # in flight on an earlier connection: send again with DUP
    dropped: int = 0
    high_status: int = 0  # the highest status seq ever sent: one at or below it goes out again with DUP
    wants_statuses: bool = False  # a subscription can match a status topic (`note_subscriptions`)
    last_seen: int = 0  # ms since the epoch: when its client was last connected (kept fresh while it is)
    expiry_ms: int | None = None  # how long it outlives its client (None: the outbox's --session-expiry)
    _next_id: int = 1

    def expired(self, now: int, default_ms: int) -> bool:
        """Whether a persistent session whose client is away was unseen for longer than its expiry."""
        return now - self.last_seen > session_expiry_ms(self.expiry_ms, default_ms)

    def seen_is_stale(self, now: int, default_ms: int) -> bool:
        """Whether a connected session's stored `last_seen` should be written again: a quarter of its expiry
        on, so that after a crash of the outbox its client has at least three quarters of it to come back."""
        return now - self.last_seen >= session_expiry_ms(self.expiry_ms, default_ms) // 4

    def note_subscriptions(self) -> None:
        """The subscriptions changed: note whether one of them can match a status topic. Kept, not asked at each wake
        of the connection nor for each status event: a scan of every filter each time made another app's publish
        90 times slower with 100,000 filters."""
        self.wants_statuses = any(may_match(f, STATUS_SHAPE) for f in self.subscriptions)

    def has_room_for(self, topic_filter: str) -> bool:
        """Whether subscribing to `topic_filter` stays within MAX_SUBSCRIPTIONS (a filter held already does)."""
        return topic_filter in self.subscriptions or len(self.subscriptions) < MAX_SUBSCRIPTIONS

    def subscribe(self, topic_filter: str, options: int) -> bool:
        """Hold `topic_filter` with its options; whether its retained messages go out now (MQTT 5 retain handling:
        always, for a new subscription only, or never)."""
        new = topic_filter not in self.subscriptions
        self.subscriptions[topic_filter] = options
        return not options & SEND_RETAINED_NEVER and (new or not options & SEND_RETAINED_IF_NEW)

    def granted_qos(self, topic: str, *, own: bool = False) -> int | None:
        """The highest QoS of the subscriptions matching `topic`, or None (one message per session).
        `own`: the message is this session's client's, which a no-local subscription does not take."""
        options = self.options_for(topic, own=own)
        return None if options is None else options & QOS_BITS

    def options_for(self, topic: str, *, own: bool = False) -> int | None:
        """The options of the subscription of highest QoS matching `topic` (see `granted_qos`), or None.

        A subscription the session's app may not hold (one kept from before logins were turned on) never
        matches: what a session receives is checked against its app at delivery, not only at SUBSCRIBE."""
        best: int | None = None
        for topic_filter, options in self.subscriptions.items():
            if (
                (best is None or options & QOS_BITS > best & QOS_BITS)
                and not (own and options & NO_LOCAL)
                and matches(topic_filter, topic)
                and may_subscribe(self.principal, topic_filter)
            ):
                best = options
        return best

    def offer(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        *,
        retain: bool = False,
        seq: int = 0,
        expires: float | None = None,
        props: Passed | None = None,
        own: bool = False,
    ) -> bool:
        """Queue a published message if a subscription matches, at min(published, granted) QoS; its RETAIN flag kept
        only for a subscription that asks for it. `own`: published by this session's client (see `granted_qos`)."""
        options = self.options_for(topic, own=own)
        if options is None:
            if seq:
                self.status.passed(seq)
            return False
        retain = retain and bool(options & RETAIN_AS_PUBLISHED)
        self.enqueue(Message(topic, payload, min(qos, options & QOS_BITS), retain, seq, expires, props))
        return True

    def enqueue(self, message: Message) -> None:
        if message.seq:
            if message.qos:
                self.status.opened(message.seq)
            else:
                self.status.passed(message.seq)
        else:
            size = message.size()
            while self.queued_bytes and (
                len(self.queue) >= self.max_queued or self.queued_bytes + size > self.max_queued_bytes
            ):
                self._drop_oldest_other()
            self.queued_bytes += size
        self.queue.append(message)

    def _drop_oldest_other(self) -> None:
        for index, queued in enumerate(self.queue):
            if not queued.seq:  # statuses are never dropped: they are bounded by the status window
                del self.queue[index]
                self.queued_bytes -= queued.size()
                self.dropped += 1
                return

    def take(self, now: float = 0.0) -> list[Send]:
        """What to write now: messages in flight from an earlier connection first, then the queue. A queued
        message whose expiry passed (`now`, monotonic) is deleted unsent [MQTT-3.3.2-5]."""
        out = [Send(self.inflight[pid], pid, True, left(self.inflight[pid], now))
               for pid in sorted(self.resend) if pid in self.inflight]  # fmt: skip
        self.resend.clear()
        while self.queue and (self.queue[0].qos == 0 or len(self.inflight) + len(self.released) < self.window):
            message = self.queue.popleft()
            if not message.seq:
                self.queued_bytes -= message.size()
            if message.expires is not None and message.expires <= now:
                continue
            dup = bool(message.seq) and message.seq <= self.high_status
            if message.seq:
                self.high_status = max(self.high_status, message.seq)
            if message.qos == 0:
                out.append(Send(message, None, False, left(message, now)))
                continue
            packet_id = self._new_id()
            self.inflight[packet_id] = message
            out.append(Send(message, packet_id, dup, left(message, now)))
        return out

    def _new_id(self) -> int:
        while True:
            packet_id = self._next_id
            self._next_id = packet_id % MAX_PACKET_ID + 1
            if packet_id not in self.inflight and packet_id not in self.released:
                return packet_id

    def puback(self, packet_id: int) -> bool:
        """A QoS 1 delivery completed; False for an id not in flight at QoS 1 (ignored)."""
        message = self.inflight.get(packet_id)
        if message is None or message.qos != 1:
            return False
        del self.inflight[packet_id]
        if message.seq:
            self.status.closed(message.seq)
        return True

    def pubrec(self, packet_id: int) -> bool:
        """A QoS 2 delivery was received: answer with PUBREL (also for a repeated PUBREC)."""
        message = self.inflight.get(packet_id)
        if message is not None and message.qos == 2:
            del self.inflight[packet_id]
            self.released.add(packet_id)
            if message.seq:
                self.status.closed(message.seq)
        return packet_id in self.released

    def discard(self, send: Send) -> None:
        """What `take` handed out is not sent after all (too large for the client): as if it were delivered."""
        if send.packet_id is not None:
            self.inflight.pop(send.packet_id, None)
        if send.message.seq and send.message.qos:
            self.status.closed(send.message.seq)

    def pubcomp(self, packet_id: int) -> None:
        self.released.discard(packet_id)

    def space(self) -> int:
        """How many more QoS 1/2 messages fit in flight."""
        return max(0, self.window - len(self.inflight) - len(self.released) - len(self.queue))

    def disconnected(self) -> None:
        """The connection ended: statuses are re-read from the log later; other messages wait for the next one."""
        self.status.rewind()
        self.queue = deque(m for m in self.queue if not m.seq)
        for packet_id in [pid for pid, m in self.inflight.items() if m.seq]:
            del self.inflight[packet_id]
        self.resend = set(self.inflight)
