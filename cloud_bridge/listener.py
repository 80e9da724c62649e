"""The devices' MQTT/TLS front door, as the bridge runs it: who gets in, what goes where.

`BridgeListener` answers the front door's questions (`front_door.DeviceEvents`) by asking the parts
that decide: CONNECT goes to the `DeviceGate` (device_gate.py), each topic to the ACL (topic_acl.py);
permitted publishes and acks subscriptions go to a MessageSink (the service), health reports and
diagnoses to a ReportSink (the fleet desk). It runs the door (`mqtt_door`) and the revocation watcher
(revocations.py), which drops revoked devices' sessions and those opened with a key that was replaced.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from cloud_bridge.device_gate import DeviceGate
from cloud_bridge.errors import ConfigError
from cloud_bridge.front_door import DeviceFrontDoor, FrontDoorFactory, Listen, Transport
from cloud_bridge.mqtt_door import MqttFrontDoor
from cloud_bridge.registry import Registry
from cloud_bridge.revocations import RevocationWatcher
from cloud_bridge.settings import BridgeSettings
from cloud_bridge.store_loss import StoreLoss
from cloud_bridge.topic_acl import Access, topic_allowed
from intent_contract.accept import ConnectionWatch
from intent_contract.logs import LogThrottles, left_out
from intent_contract.wire import ACKS, DIAGNOSIS, HEALTH, device_topic, split_device_topic

logger = logging.getLogger(__name__)


REFUSAL_LOG_INTERVAL = 10.0  # seconds between 'topic refused' lines of one device


class MessageSink(Protocol):
    """What the listener hands over: permitted publishes and acks subscriptions."""

    def submit(self, device_id: str, leaf: str, data: bytes) -> None:
        """Queue one permitted publish; must not block."""

    async def on_acks_subscribed(self, device_id: str) -> None:
        """The device (re)subscribed to its acks topic."""


class ReportSink(Protocol):
    """Where health reports and diagnoses go (the fleet desk)."""

    def submit(self, device_id: str, leaf: str, data: bytes) -> None:
        """Take one permitted publish; must not block."""


class BridgeListener:
    """The device front door plus the revocation watcher; implements front_door.DeviceEvents."""

    def __init__(
        self,
        settings: BridgeSettings,
        registry: Registry,
        gate: DeviceGate,
        sink: MessageSink,
        *,
        reports: ReportSink | None = None,
        watch: ConnectionWatch | None = None,
        on_topic_refused: Callable[[str], None] | None = None,
        front_door: FrontDoorFactory = MqttFrontDoor,
        settle: Callable[[str], Awaitable[int]] | None = None,
    ) -> None:
        if settings.tls_cert is None or settings.tls_key is None:
            raise ConfigError("the MQTT listener needs --tls-cert and --tls-key")
        self._gate = gate
        self._sink = sink
        self._reports = reports
        cert, key, limits = settings.tls_cert, settings.tls_key, settings.connection_limits
        listens = [Listen(Transport.TCP, settings.listen, cert, key, limits, watch)]
        if settings.ws_listen is not None:
            listens.append(Listen(Transport.WEBSOCKET, settings.ws_listen, cert, key, limits, watch))
        self._door: DeviceFrontDoor = front_door(listens, self)
        self._refusal_logs = LogThrottles(REFUSAL_LOG_INTERVAL)
        self._on_topic_refused = on_topic_refused  # counts every refusal (the log line is throttled)
        self._revocations = RevocationWatcher(
            registry,
            settings.revocation_poll,
            sessions=self._door.session_keys,
            drop=self._end_session,
            settle=settle,
            # Other nodes may reach a shared store this one cannot: past the lease its devices go to them.
            lost=StoreLoss(settings.lease, sessions=self._door.connected, drop=self._door.drop)
            if settings.store is not None and settings.store.shared
            else None,
        )

    @property
    def revoked(self) -> frozenset[str]:
        """Ids of revoked devices, as the watcher last read them (the executor skips their queued work)."""
        return self._revocations.revoked

    # -- front_door.DeviceEvents ----------------------------------------------------------------

    async def authenticate(
        self, client_id: str | None, username: str | None, password: str | bytes | None, address: str = ""
    ) -> str | None:
        return await self._gate.authenticate(client_id, username, password, address)

    def allowed(self, device_id: str | None, topic: str, access: Access) -> bool:
        allowed = topic_allowed(device_id, topic, access)
        if not allowed:
            if self._on_topic_refused is not None:
                self._on_topic_refused(str(access))
            # A line per device per REFUSAL_LOG_INTERVAL: one SUBSCRIBE can carry 200,000 refused filters.
            not_logged = self._refusal_logs.allow(device_id or "", time.monotonic())
            if not_logged is not None:
                context = {"device_id": device_id, "action": str(access), "code": "topic_refused"}
                logger.info("topic refused%s", left_out(not_logged), extra={**context, "not_logged": not_logged})
        return allowed

    def on_publish(self, device_id: str, topic: str, data: bytes) -> None:
        split = split_device_topic(topic)
        if split is None or split[0] != device_id:
            return
        if split[1] in (HEALTH, DIAGNOSIS):
            if self._reports is not None:
                self._reports.submit(device_id, split[1], data)
            return
        self._sink.submit(device_id, split[1], data)

    async def on_subscribed(self, device_id: str, topic: str) -> None:
        if topic == device_topic(device_id, ACKS):
            await self._sink.on_acks_subscribed(device_id)

    # -- lifecycle and sending ------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the listeners and start watching for revocations; BridgeError when a port is taken."""
        await self._door.start()
        await self._revocations.start()

    async def stop(self) -> None:
        await self._revocations.stop()
        await self._door.stop()

    async def publish(self, device_id: str, leaf: str, data: bytes) -> None:
        """Send QoS 1 on `devices/{device_id}/{leaf}` if that device is connected and subscribed to it (`send`).

        Straight to the device's own connection (see mqtt_door): broadcasting compared every topic
        with every subscription, a third of the bridge's time with 1,000 devices (bench/findings.md
        F13). A device not reachable now gets its results when it subscribes again
        (`on_acks_subscribed`): they stay unconfirmed in the ledger until then.
        """
        self.send(device_id, leaf, data)

    def send(self, device_id: str, leaf: str, data: bytes) -> bool:
        """`publish`, saying whether the device was connected here and subscribed to that topic."""
        return self._door.send(device_id, device_topic(device_id, leaf), data)

    def subscribed(self, device_id: str, leaf: str) -> bool:
        """True when the device is connected here and subscribed to `devices/{device_id}/{leaf}`."""
        return self._door.subscribed(device_id, device_topic(device_id, leaf))

    def holds(self, device_id: str) -> bool:
        """True when this node has a live session of the device."""
        return self._door.holds(device_id)

    def connected(self) -> list[str]:
        """Ids of the devices with a live connection."""
        return self._door.connected()

    def use_tls(self, context: ssl.SSLContext) -> None:
        """New connections get this certificate and key."""
        self._door.use_tls(context)

    async def _end_session(self, device_id: str, key: str | None) -> bool:
        """Close a revoked device's connection (`key` None), or the one opened with `key`, a key that ended."""
        dropped = await self._door.drop(device_id, key)
        if dropped and key is None:
            logger.warning("revoked device disconnected", extra={"device_id": device_id, "code": "device_revoked"})
        elif dropped:
            logger.warning(
                "device session disconnected: the key it connected with was replaced (key rotation) or revoked",
                extra={"device_id": device_id, "code": "key_replaced"},
            )
        return dropped
