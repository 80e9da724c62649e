"""The devices' front door as the bridge sees it: our own small protocol, whatever broker is behind it.

`BridgeListener` (listener.py) implements `DeviceEvents` and drives a `DeviceFrontDoor`; the only
implementation is `mqtt_door.MqttFrontDoor`, on the project's own MQTT codec (it replaced amqtt: docs/bridge.md).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final, Protocol

from cloud_bridge.settings import HostPort
from cloud_bridge.topic_acl import Access
from intent_contract.accept import ConnectionWatch
from intent_contract.accept_limits import DEFAULT_CONNECTION_LIMITS, ConnectionLimits
from intent_contract.wire import DEFAULT_LIMITS

# The largest MQTT packet a device may send: the codec's largest message plus room for the fixed
# header, topic and packet id. A CONNECT carries ids and a token of at most 4 KiB (tokens.py).
MAX_PACKET: Final = DEFAULT_LIMITS.max_bytes + 1024
MAX_CONNECT: Final = 8 * 1024


class Transport(StrEnum):
    TCP = "tcp"
    WEBSOCKET = "ws"


@dataclass(frozen=True, slots=True)
class Listen:
    """One TLS listener of the front door."""

    transport: Transport
    bind: HostPort
    cert: Path
    key: Path
    limits: ConnectionLimits = DEFAULT_CONNECTION_LIMITS  # connections not yet authenticated (intent_contract.accept)
    watch: ConnectionWatch | None = None  # hears how the limits hold (the metrics)


class DeviceEvents(Protocol):
    """What the front door asks the bridge, and tells it, about devices."""

    async def authenticate(
        self, client_id: str | None, username: str | None, password: str | bytes | None, address: str = ""
    ) -> str | None:
        """The device key (PEM) this CONNECT (from source `address`) proved, or None when it may not proceed."""

    def allowed(self, device_id: str | None, topic: str, access: Access) -> bool:
        """The topic ACL; `device_id` is None for a session whose client id is not its username."""

    def on_publish(self, device_id: str, topic: str, data: bytes) -> None:
        """A permitted publish of a device; must not block (QoS 1 is acknowledged when this returns)."""

    async def on_subscribed(self, device_id: str, topic: str) -> None:
        """A device subscribed to `topic` (already allowed)."""


class DeviceFrontDoor(Protocol):
    """MQTT/TLS listeners for devices: authenticated, ACL-checked, packets bounded by MAX_PACKET."""

    async def start(self) -> None:
        """Bind every listener; BridgeError(code='listen_failed') when one cannot."""

    def use_tls(self, context: ssl.SSLContext) -> None:
        """Connections accepted from now on get this certificate and key (a reload read them again)."""

    async def stop(self) -> None:
        """Close every connection and listener; pending sends are cancelled."""

    def connected(self) -> list[str]:
        """Ids of the devices with a live connection."""

    def session_keys(self) -> dict[str, str]:
        """Device id -> the key its live connection authenticated with."""

    def holds(self, device_id: str) -> bool:
        """True when the device has a live connection here."""

    def subscribed(self, device_id: str, topic: str) -> bool:
        """True when the device is connected here and subscribed to `topic`."""

    def send(self, device_id: str, topic: str, data: bytes) -> bool:
        """Start a QoS 1 send if the device is connected and subscribed to `topic`; False if not."""

    async def drop(self, device_id: str, key: str | None = None) -> bool:
        """Close the device's connection now (only one opened with `key`, when given); True if there was one."""


FrontDoorFactory = Callable[[Sequence[Listen], DeviceEvents], DeviceFrontDoor]
