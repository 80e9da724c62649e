"""Attach mode: take intents from a broker the site already runs (e.g. Mosquitto) instead of embedding one.

The outbox subscribes to outbox/+/+ with a persistent session (clean_session=False) and manual acks:
it acknowledges each message to the broker only after committing it. The app's own PUBACK comes from
that broker, before the outbox has seen the message, so in this mode the app's durability signal is
the `accepted` status, not the PUBACK (see README).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge_outbox.intake import Intake
from edge_outbox.settings import AttachTarget

log = logging.getLogger(__name__)

INTAKE_FILTER = "outbox/+/+"


class AttachedClient:
    """A paho client bridged into the event loop."""

    def __init__(self, target: AttachTarget, intake: Intake) -> None:
        self._target = target
        self._intake = intake
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
        self._client = client

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(self._target.host, self._target.port, keepalive=30)
        self._client.loop_start()
        log.info("attaching to mqtt://%s:%d as %s", self._target.host, self._target.port, self._target.client_id)

    async def stop(self) -> None:
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    async def publish(self, topic: str, payload: bytes) -> None:
        self._client.publish(topic, payload, qos=1)

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
        log.info("attached; subscribed to %s", INTAKE_FILTER)

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: object, _flags: object, reason: object, _props: object
    ) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.connected.clear)
        log.warning("attach broker connection lost (%s); paho reconnects", reason)

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        assert self._loop is not None
        future: Future[None] = asyncio.run_coroutine_threadsafe(
            self._receive(message.topic, bytes(message.payload), message.mid, message.qos), self._loop
        )
        future.add_done_callback(_log_failure)

    async def _receive(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        await self._intake.receive(topic, payload)  # returns only once committed
        if qos > 0:
            self._client.ack(mid, qos)


def _log_failure(future: Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("attach intake failed: %s", future.exception())
