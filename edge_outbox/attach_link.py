"""One connection of attach mode to the site's broker: what it must acknowledge and what it has in flight,
and the words and TLS context of the link (edge_outbox.attach serves it)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from edge_outbox.attach_wire import V311
from edge_outbox.db import StatusEvent
from edge_outbox.errors import ConfigError
from edge_outbox.mqtt.session import MAX_PACKET_ID
from edge_outbox.settings import AttachTarget
from edge_outbox.status import status_payload, status_topic
from intent_contract import mqtt_packets as p

log = logging.getLogger("edge_outbox.attach")  # the attach client's lines, under its name

READ_CHUNK = 1 << 16
# Packet ids of our SUBSCRIBEs (attach.SUBSCRIBE_ID, attach_drops.DROPS_SUBSCRIBE_ID), sent as each connection
# starts: a status is never given one, which may still await its SUBACK [MQTT-2.3.1-2].
SUBSCRIBE_IDS = 2
ACKED_KEPT = 1000  # intents acknowledged last on a connection, known by packet id when it ends (Carried)
RETAINED_TOPICS_NAMED = 1024  # topics whose retained copies were named in the log; forgotten beyond


@dataclass(slots=True)
class Received:
    """A message from the broker, acknowledged once `done` (its commit) is; at QoS 0 (no packet id) only counted."""

    packet_id: int | None
    done: asyncio.Future[Any]  # the intake's commit, or one done at once for a copy not taken (a retained one)
    taken: tuple[str, bytes, int | None] | None = None  # an intake's message: its topic, payload and full size


class Link:
    """One connection to the broker: what it has sent us to acknowledge and what we sent it."""

    def __init__(self, writer: asyncio.StreamWriter, wire: V311) -> None:
        self.writer = writer
        self.wire = wire  # the MQTT version spoken on it
        self.window = 1  # statuses in flight at most: attach.STATUS_WINDOW, or less as the broker says (MQTT 5)
        self.keepalive = 1.0  # seconds: attach.KEEPALIVE_S, or the broker's server keep alive (MQTT 5)
        self.received: deque[Received] = deque()  # in arrival order; acknowledged from the left
        self.acked: deque[tuple[int, int]] = deque(maxlen=ACKED_KEPT)  # (packet id, digest) of the last intents acked
        self.watching = False  # a callback waits on the oldest message not yet committed
        self.room = asyncio.Event()  # set while fewer than attach.MAX_UNCOMMITTED messages wait for their commit
        self.room.set()
        self.statuses: dict[int, int] = {}  # our packet id -> status seq (0: a replayed one), until the broker's PUBACK
        self.next_id = 0
        self.last_heard = time.monotonic()
        self.stopping = False  # the outbox stops: nothing more is taken, what was is acknowledged once committed
        self.heard_publish = False  # a PUBLISH came on this connection (at least our own hello should)
        self.pings = 0  # PINGREQs sent on this connection

    async def settle(self, within_s: float) -> None:
        """Wait (at most `within_s`) until what was taken is committed and acknowledged. The broker sends again
        what was not acknowledged when the connection ended, and the stop ended it at once: every intent without
        an id of the app's committed and not yet acknowledged was taken again, as a new one, after the restart
        (7,453 of 60,000 over 6 stops of a draining outbox)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while self.received and not self.writer.is_closing() and (left := deadline - loop.time()) > 0:
            waiting = [r.done for r in self.received if not r.done.done()]
            if waiting:
                await asyncio.wait(waiting, timeout=left)
            else:
                await asyncio.sleep(0)  # the acknowledging callback runs on the loop's next turn

    def resume(self) -> None:
        """Let reading go on. The broker's silence counts from now: a paused reader hears nothing, and the
        keepalive may run before the reader does (it dropped a healthy link after a long pause)."""
        if not self.room.is_set():
            self.last_heard = time.monotonic()
            self.room.set()

    def publish_statuses(self, events: list[StatusEvent], *, replayed: bool = False) -> tuple[bytearray, set[int]]:
        """The PUBLISHes of `events`, and the seqs of those in flight until the broker's PUBACK (a replayed one's
        seq kept as 0: its acknowledgement moves no position). At QoS 0 to a broker that takes no more (MQTT 5
        maximum QoS 0); one over the broker's maximum packet size (MQTT 5) is not sent, and counts as delivered:
        the broker ends the connection on it [MQTT-3.2.2-15], and it was sent again on every connection."""
        out, awaited = bytearray(), set()
        qos, limit = self.wire.max_qos, self.wire.max_packet
        for event in events:
            topic = status_topic(event.app, event.id)
            packet_id = self.new_id() if qos else None
            packet = self.wire.publish(topic, status_payload(event), qos, packet_id, status=True)
            if limit is not None and len(packet) > limit:
                log.warning("the status %s of %s (%d bytes) is over the attach broker's maximum packet size (%d): "
                            "not sent (Mosquitto: max_packet_size)", event.state.value, event.id, len(packet), limit,
                            extra={"app": event.app, "intent_id": event.id})  # fmt: skip
                continue
            out += packet
            if packet_id is not None:
                self.statuses[packet_id] = 0 if replayed else event.seq
                awaited.add(event.seq)
        return out, awaited

    def new_id(self) -> int:
        """A packet id no status in flight uses (the window keeps far fewer in flight than there are ids), nor a
        SUBSCRIBE: a connection's first statuses took ids 1 and 2, those of its SUBSCRIBEs still awaiting their
        SUBACKs."""
        while True:
            self.next_id = max(self.next_id % MAX_PACKET_ID, SUBSCRIBE_IDS) + 1
            if self.next_id not in self.statuses:
                return self.next_id


async def first_packets(reader: asyncio.StreamReader, framer: p.CuttingFramer) -> list[tuple[int, bytes]]:
    """Read until the CONNACK is in; returns it and whatever came after it in the same reads."""
    while True:
        data = await reader.read(READ_CHUNK)
        if not data:
            raise EOFError("the broker closed the connection before CONNACK")
        packets = framer.feed(data)
        if packets:
            return packets


class RetainedNames:
    """The topics on which the broker holds a retained message, or on which one was cleared, each named once."""

    def __init__(self) -> None:
        self._named: set[str] = set()

    def name(self, topic: str, *, cleared: bool = False) -> None:
        """`cleared`: an empty message came on `topic`, which is how a retained message is cleared."""
        key = f"{topic} cleared" if cleared else topic  # a topic's clear is named once too, after its retained copy
        if key in self._named:
            return
        if len(self._named) >= RETAINED_TOPICS_NAMED:
            self._named.clear()
        self._named.add(key)
        if cleared:
            log.info("an empty message on %s (how a retained message is cleared) is acknowledged and not taken as "
                     "an intent", topic)  # fmt: skip
            return
        log.warning(
            "the attach broker holds a retained message on %s: it is sent again on every subscribe, so it is "
            "acknowledged and not taken as an intent (publish intents without the retain flag; clear it with an "
            "empty retained publish to that topic)",
            topic,
        )


def tls_context(target: AttachTarget) -> ssl.SSLContext:
    """Verify the broker's certificate and name, against `--attach-ca` or the system's trust store; show it our
    certificate (`--attach-cert`) when there is one."""
    try:
        context = ssl.create_default_context(cafile=None if target.ca_file is None else str(target.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--attach-ca {target.ca_file}: cannot load CA certificates (PEM) from it: {exc}") from None
    if target.cert_file is not None:
        try:  # an encrypted key gets an empty password (and fails) instead of a prompt on the terminal
            context.load_cert_chain(target.cert_file, target.key_file, password=lambda: b"")
        except (OSError, ssl.SSLError) as exc:
            key = f" and --attach-key {target.key_file}" if target.key_file else ""
            raise ConfigError(
                f"--attach-cert {target.cert_file}{key}: cannot load a client certificate (PEM) and its key "
                f"(PEM, not encrypted) that belong together: {exc}"
            ) from None
    return context


def why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
