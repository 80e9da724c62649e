"""Attach mode: take intents from a broker the site already runs (e.g. Mosquitto) instead of embedding one.

The outbox subscribes to outbox/+/+ with a persistent session (clean_session=False) and manual acks:
it acknowledges each message to the broker only after committing it. The app's own PUBACK comes from
that broker, before the outbox has seen the message, so in this mode the app's durability signal is
the `accepted` status, not the PUBACK (see README).

Statuses go to the broker at QoS 1 in sequence order; the broker is one more status consumer, whose
position (every status up to it acknowledged by the broker) is kept under STATUS_KEY, so a restart
sends again what the broker may not have.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from functools import partial

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_outbox.intake import Intake
from edge_outbox.intake_rules import TOPIC_ROOT
from edge_outbox.mqtt.session import StatusCursor
from edge_outbox.ops import IntakeResult
from edge_outbox.settings import AttachTarget
from edge_outbox.status import StatusFeed, status_payload, status_topic

log = logging.getLogger(__name__)

INTAKE_FILTER = f"{TOPIC_ROOT}/+/+"
STATUS_WINDOW = 1000  # statuses published to the broker and not yet acknowledged by it


class AttachedClient:
    """A paho client bridged into the event loop."""

    def __init__(self, target: AttachTarget, intake: Intake, feed: StatusFeed, position: int) -> None:
        self._target = target
        self._intake = intake
        self._feed = feed
        self.status = StatusCursor(position)
        self._mids: dict[int, int] = {}  # paho message id -> status seq
        # Messages paho has read and the event loop has not taken yet. paho's thread appends; one
        # wake-up of the loop takes all of them (a wake-up per message cost more than the intake).
        self._inbox: deque[tuple[str, bytes, int, int]] = deque()
        self._inbox_wake_pending = False
        self._wake = asyncio.Event()
        self._statuses: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connected = asyncio.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=target.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if target.username:
            client.username_pw_set(target.username, target.password)
        client.max_inflight_messages_set(100)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self._client = client
        feed.listen(self._wake.set)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(self._target.host, self._target.port, keepalive=30)
        self._client.loop_start()
        self._statuses = asyncio.create_task(self._publish_statuses(), name="attach-statuses")
        log.info("attaching to mqtt://%s:%d as %s", self._target.host, self._target.port, self._target.client_id)

    async def stop(self) -> None:
        if self._statuses is not None:
            self._statuses.cancel()
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    async def _publish_statuses(self) -> None:
        """Hand statuses to paho in order; paho resends the unacknowledged ones after a reconnect."""
        cursor = self.status
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.connected.is_set():
                continue
            events = await self._feed.read(cursor.sent, STATUS_WINDOW - cursor.open)
            for event in events:
                info = self._client.publish(status_topic(event.app, event.id), status_payload(event), qos=1)
                self._mids[info.mid] = event.seq
                cursor.opened(event.seq)
            if events:
                self._wake.set()

    def _acked(self, mid: int) -> None:
        seq = self._mids.pop(mid, None)
        if seq is not None:
            self.status.closed(seq)
            self._wake.set()

    # paho callbacks run on paho's thread: hand everything to the event loop.
    def _on_connect(
        self, client: mqtt.Client, _userdata: object, _flags: object, reason: object, _props: object
    ) -> None:
        if getattr(reason, "is_failure", False):
            log.error("attach broker refused the connection: %s", reason)
            return
        client.subscribe(INTAKE_FILTER, qos=1)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.connected.set)
        self._loop.call_soon_threadsafe(self._wake.set)
        log.info("attached; subscribed to %s", INTAKE_FILTER)

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: object, _flags: object, reason: object, _props: object
    ) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.connected.clear)
        log.warning("attach broker connection lost (%s); paho reconnects", reason)

    def _on_publish(self, _client: mqtt.Client, _userdata: object, mid: int, _reason: object, _props: object) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._acked, mid)

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        self._inbox.append((message.topic, bytes(message.payload), message.mid, message.qos))
        if not self._inbox_wake_pending:
            self._inbox_wake_pending = True
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._take_inbox)

    def _take_inbox(self) -> None:
        """Hand every waiting message to the intake; each is acknowledged to the broker once committed."""
        self._inbox_wake_pending = False  # before taking: a message appended after this schedules anew
        while self._inbox:
            topic, payload, mid, qos = self._inbox.popleft()
            future = self._intake.submit(topic, payload)
            future.add_done_callback(partial(self._committed, mid, qos))

    def _committed(self, mid: int, qos: int, done: asyncio.Future[IntakeResult]) -> None:
        if done.cancelled():
            return
        if done.exception() is not None:
            # Not acknowledged: the broker sends it again after the next reconnect.
            log.error("attach intake failed: %s", done.exception())
            return
        if qos > 0:
            self._client.ack(mid, qos)
