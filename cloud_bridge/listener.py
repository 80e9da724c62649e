"""The devices' MQTT/TLS front door: an amqtt broker with device auth, a topic ACL and revocation.

The broker only moves bytes. Three small plugins connect it to the bridge:
- DeviceAuthPlugin: CONNECT needs client id = username = an enrolled, unrevoked device id and a
  password that is a fresh ES256 JWT of that device (cloud_bridge.tokens).
- DeviceTopicPlugin: a device publishes only to its own intents/confirms topics and subscribes to or
  receives only its own acks topic; a refused publish never reaches the service.
- BridgeEventsPlugin: hands permitted publishes and acks subscriptions to a MessageSink (the service).
amqtt builds plugins from dotted paths and a Config dataclass, so the live objects travel in that
Config (typed Any there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from amqtt.broker import Broker
from amqtt.contexts import Action, BrokerConfig, ListenerConfig, ListenerType
from amqtt.errors import BrokerError
from amqtt.mqtt.constants import QOS_1
from amqtt.plugins.base import BaseAuthPlugin, BasePlugin, BaseTopicPlugin
from amqtt.session import ApplicationMessage, Session

from cloud_bridge.errors import AuthError, BridgeError, ConfigError
from cloud_bridge.registry import Registry
from cloud_bridge.settings import BridgeSettings
from cloud_bridge.tokens import ReplayCache, verify_device_token
from intent_contract.names import is_name

logger = logging.getLogger(__name__)

INTENTS, CONFIRMS, ACKS = "intents", "confirms", "acks"


def device_topic(device_id: str, leaf: str) -> str:
    """`devices/{device_id}/{leaf}`."""
    return f"devices/{device_id}/{leaf}"


def split_device_topic(topic: str) -> tuple[str, str] | None:
    """(device_id, leaf) of a `devices/{id}/{leaf}` topic, or None."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "devices" or not is_name(parts[1]):
        return None
    return parts[1], parts[2]


def topic_allowed(device_id: str | None, topic: str, action: str) -> bool:
    """The ACL: publish to own intents/confirms; subscribe to and receive own acks; nothing else."""
    if not device_id:
        return False
    split = split_device_topic(topic)
    if split is None or split[0] != device_id:
        return False
    if action == Action.PUBLISH:
        return split[1] in (INTENTS, CONFIRMS)
    return split[1] == ACKS  # subscribe / receive


class MessageSink(Protocol):
    """What the broker hands over: permitted publishes and acks subscriptions."""

    def submit(self, device_id: str, leaf: str, data: bytes) -> None:
        """Queue one permitted publish; must not block."""

    async def on_acks_subscribed(self, device_id: str) -> None:
        """The device (re)subscribed to its acks topic."""


class DeviceGate:
    """Connect-time authentication against the registry, with a jti replay cache."""

    def __init__(
        self,
        registry: Registry,
        audience: str,
        *,
        clock: Callable[[], float] = time.time,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self._registry = registry
        self._audience = audience
        self._clock = clock
        self._replay = ReplayCache()
        self._on_refused = on_refused

    async def authenticate(self, client_id: str | None, username: str | None, password: str | bytes | None) -> bool:
        """True when the CONNECT may proceed; every refusal is logged with a code, never the token."""
        try:
            await self._check(client_id, username, password)
        except AuthError as exc:
            logger.warning("device connect refused", extra={"device_id": username, "code": exc.code})
            if self._on_refused is not None:
                self._on_refused(exc.code)
            return False
        return True

    async def _check(self, client_id: str | None, username: str | None, password: str | bytes | None) -> None:
        if not username or not is_name(username) or client_id != username:
            raise AuthError("client id and username must both be the device id", code="bad_identity")
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        if not password:
            raise AuthError("no token", code="token_invalid")
        device = await asyncio.to_thread(self._registry.get, username)
        if device is None:
            raise AuthError("unknown device", code="unknown_device")
        if device.revoked:
            raise AuthError("device is revoked", code="device_revoked")
        now = self._clock()
        claims = verify_device_token(
            password, device_id=device.device_id, public_key_pem=device.public_key, audience=self._audience, now=now
        )
        self._replay.check_and_add(claims, now)


class DeviceAuthPlugin(BaseAuthPlugin):  # type: ignore[misc,unused-ignore]  # amqtt ships no type hints
    """amqtt auth plugin delegating to a DeviceGate."""

    @dataclass
    class Config:
        gate: Any = None

    async def authenticate(self, *, session: Session) -> bool | None:
        gate: DeviceGate = self.config.gate
        return await gate.authenticate(session.client_id, session.username, session.password)


class DeviceTopicPlugin(BaseTopicPlugin):  # type: ignore[misc,unused-ignore]
    """amqtt topic plugin enforcing `topic_allowed`."""

    @dataclass
    class Config:
        enabled: bool = True

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool | None:
        if session is None or topic is None or action is None:
            return False
        allowed = topic_allowed(session.username if session.username == session.client_id else None, topic, action)
        if not allowed:
            logger.info("topic refused", extra={"device_id": session.client_id, "action": str(action)})
        return allowed


class BridgeEventsPlugin(BasePlugin[Any]):  # type: ignore[misc,unused-ignore]
    """amqtt plugin passing permitted publishes and acks subscriptions to the service."""

    @dataclass
    class Config:
        sink: Any = None

    async def on_broker_message_broadcast(self, *, client_id: str, message: ApplicationMessage) -> None:
        split = split_device_topic(message.topic or "")
        if split is None or split[0] != client_id or message.data is None:
            return
        sink: MessageSink = self.config.sink
        sink.submit(client_id, split[1], bytes(message.data))

    async def on_broker_client_subscribed(self, *, client_id: str, topic: str, qos: int) -> None:
        if topic == device_topic(client_id, ACKS):
            sink: MessageSink = self.config.sink
            await sink.on_acks_subscribed(client_id)


class _DeviceBroker(Broker):  # type: ignore[misc,unused-ignore]
    """amqtt's broker, minus broadcasting what devices publish.

    The ACL lets nobody subscribe to a device's intents or confirms (devices may subscribe only to
    their own acks), so matching each of those messages against every subscription, one per device,
    only cost time (bench/findings.md F13). The service still gets them through BridgeEventsPlugin.
    """

    async def _broadcast_message(self, session: Session | None, *args: Any, **kwargs: Any) -> None:
        if session is None:
            await super()._broadcast_message(session, *args, **kwargs)


def _listener(kind: ListenerType, bind: str, settings: BridgeSettings) -> ListenerConfig:
    return ListenerConfig(
        type=kind, bind=bind, ssl=True, certfile=settings.tls_cert, keyfile=settings.tls_key, max_connections=0
    )


class BridgeListener:
    """The running broker plus the revocation watcher; `publish` sends to a device's topic."""

    def __init__(self, settings: BridgeSettings, registry: Registry, gate: DeviceGate, sink: MessageSink) -> None:
        if settings.tls_cert is None or settings.tls_key is None:
            raise ConfigError("the MQTT listener needs --tls-cert and --tls-key")
        self._settings = settings
        self._registry = registry
        listeners = {"default": _listener(ListenerType.TCP, str(settings.listen), settings)}
        if settings.ws_listen is not None:
            listeners["ws-tls"] = _listener(ListenerType.WS, str(settings.ws_listen), settings)
        self._config = BrokerConfig(
            listeners=listeners,
            plugins={
                f"{__name__}.DeviceAuthPlugin": {"gate": gate},
                f"{__name__}.DeviceTopicPlugin": {},
                f"{__name__}.BridgeEventsPlugin": {"sink": sink},
            },
        )
        self._broker: Broker | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[Any]] = set()
        # Ids of revoked devices, refreshed by the watcher (the executor skips their queued work).
        self.revoked: frozenset[str] = frozenset()

    async def start(self) -> None:
        """Bind the listeners and start watching for revocations; BridgeError when a port is taken."""
        broker = _DeviceBroker(self._config)
        try:
            await broker.start()
        except BrokerError as exc:
            raise BridgeError(f"MQTT listener failed to start: {exc}", code="listen_failed") from exc
        self._broker = broker
        # Counter first, then the ids: a revocation in between is seen again by the watcher.
        counter = await asyncio.to_thread(self._registry.revocation_counter)
        self.revoked = frozenset(await asyncio.to_thread(self._registry.revoked_ids))
        self._watcher = asyncio.create_task(self._watch_revocations(counter), name="revocation-watcher")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for send in list(self._sends):
            send.cancel()
        await asyncio.gather(*self._sends, return_exceptions=True)
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None

    async def publish(self, device_id: str, leaf: str, data: bytes) -> None:
        """Send QoS 1 on `devices/{device_id}/{leaf}` if that device is connected and subscribed to it.

        Straight to the device's own session: amqtt's broadcast compares every topic with every
        subscription (one per connected device) and cost a third of the bridge's time with 1,000
        devices (bench/findings.md F13). A device may subscribe only to its exact acks topic (the
        ACL), so one dictionary lookup finds it. A device not reachable now gets its results when it
        subscribes again (`on_acks_subscribed`): they stay unconfirmed in the ledger until then.
        """
        broker = self._broker
        topic = device_topic(device_id, leaf)
        if broker is None or device_id not in broker.sessions:
            return
        session, handler = broker.sessions[device_id]
        subscribed = any(s.client_id == device_id for s, _ in broker._subscriptions.get(topic, ()))
        if handler is None or session.transitions.state != "connected" or not subscribed:
            return
        send = asyncio.create_task(handler.mqtt_publish(topic, data, QOS_1, retain=False), name=f"send {topic}")
        self._sends.add(send)  # the device's PUBACK is awaited there, not here
        send.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[Any]) -> None:
        self._sends.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The connection dropped: the results stay unconfirmed and go out again on the next subscribe.
            logger.info("acks not delivered: %s", type(task.exception()).__name__)

    def connected(self) -> list[str]:
        """Ids of the devices with a live connection."""
        if self._broker is None:
            return []
        return [cid for cid, (session, _) in self._broker.sessions.items() if session.transitions.state == "connected"]

    async def drop(self, device_id: str) -> bool:
        """Close the device's connection now; True if there was one."""
        if self._broker is None or device_id not in self._broker.sessions:
            return False
        _, handler = self._broker.sessions[device_id]
        writer = handler.writer
        if writer is None:
            return False
        try:
            await asyncio.wait_for(writer.close(), timeout=1.0)
        except (TimeoutError, OSError):
            # A peer that does not read keeps drain() waiting: cut the transport instead.
            transport = getattr(getattr(writer, "_writer", None), "transport", None)
            if transport is not None:
                transport.abort()
        logger.warning("revoked device disconnected", extra={"device_id": device_id})
        return True

    async def _watch_revocations(self, last: int) -> None:
        while True:
            await asyncio.sleep(self._settings.revocation_poll)
            try:
                counter = await asyncio.to_thread(self._registry.revocation_counter)
                if counter == last:
                    continue
                revoked = await asyncio.to_thread(self._registry.revoked_ids)
            except BridgeError:
                logger.exception("revocation watcher cannot read the registry")
                continue
            last = counter
            self.revoked = frozenset(revoked)
            for device_id in self.connected():
                if device_id in revoked:
                    await self.drop(device_id)
