"""One connection of attach mode to the site's broker: what it must acknowledge and what it has in flight,
and the words and TLS context of the link (edge_outbox.attach serves it)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from edge_outbox.db import StatusEvent
from edge_outbox.errors import ConfigError
from edge_outbox.mqtt.session import MAX_PACKET_ID
from edge_outbox.settings import AttachTarget
from edge_outbox.status import status_payload, status_topic
from intent_contract import mqtt_packets as p
from intent_contract.mqtt_packets import ConnackCode


@dataclass(slots=True)
class Received:
    """A message from the broker, acknowledged once `done` (its commit) is; at QoS 0 (no packet id) only counted."""

    packet_id: int | None
    done: asyncio.Future[Any]  # the intake's commit, or one done at once for a copy not taken (a retained one)


class Link:
    """One connection to the broker: what it has sent us to acknowledge and what we sent it."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.received: deque[Received] = deque()  # in arrival order; acknowledged from the left
        self.watching = False  # a callback waits on the oldest message not yet committed
        self.room = asyncio.Event()  # set while fewer than attach.MAX_UNCOMMITTED messages wait for their commit
        self.room.set()
        self.statuses: dict[int, int] = {}  # our packet id -> status seq (0: a replayed one), until the broker's PUBACK
        self.next_id = 0
        self.last_heard = time.monotonic()
        self.stopping = False  # the outbox stops: nothing more is taken, what was is acknowledged once committed
        self.heard_publish = False  # a PUBLISH came on this connection (at least our own hello should)
        self.pings = 0  # PINGREQs sent on this connection

    def resume(self) -> None:
        """Let reading go on. The broker's silence counts from now: a paused reader hears nothing, and the
        keepalive may run before the reader does (it dropped a healthy link after a long pause)."""
        if not self.room.is_set():
            self.last_heard = time.monotonic()
            self.room.set()

    def publish_statuses(self, events: list[StatusEvent], *, replayed: bool = False) -> bytearray:
        """The PUBLISHes of `events`, in flight until the broker's PUBACK (a replayed one's seq kept as 0: its
        acknowledgement moves no position)."""
        out = bytearray()
        for event in events:
            packet_id = self.new_id()
            out += p.encode_publish(
                status_topic(event.app, event.id), status_payload(event), 1, packet_id, retain=False, dup=False
            )
            self.statuses[packet_id] = 0 if replayed else event.seq
        return out

    def new_id(self) -> int:
        """A packet id no status in flight uses (the window keeps far fewer in flight than there are ids)."""
        while True:
            self.next_id = self.next_id % MAX_PACKET_ID + 1
            if self.next_id not in self.statuses:
                return self.next_id


def tls_context(target: AttachTarget) -> ssl.SSLContext:
    """Verify the broker's certificate and name, against `--attach-ca` or the system's trust store."""
    try:
        return ssl.create_default_context(cafile=None if target.ca_file is None else str(target.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"--attach-ca {target.ca_file}: cannot load CA certificates (PEM) from it: {exc}") from None


def connack_reason(code: int) -> str:
    try:
        return ConnackCode(code).name.lower().replace("_", " ")
    except ValueError:
        return f"CONNACK code {code}"


def why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
