"""What the MQTT endpoint needs of the rest of the outbox (the intake, the session store, the app logins), its
settings, and whether a CONNECT keeps its session: the endpoint's edges, apart from how it serves clients."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_outbox.mqtt.session import MAX_QUEUED_BYTES, SessionRecord
from intent_contract import mqtt_packets as p


class IntakePort(Protocol):
    """What the endpoint needs of the intake."""

    def is_intake(self, topic: str) -> bool: ...

    def replay_app(self, topic: str) -> str | None:
        """The app of a status replay request topic, else None."""

    def submit(
        self,
        topic: str,
        raw: bytes,
        *,
        principal: str | None,
        expiry_s: int | None = None,
        size: int | None = None,
        taken: tuple[str, int] | None = None,
    ) -> asyncio.Future[Any]:
        """Take a publish (`size`: the payload's full size when `raw` is only its head; `taken`: the (client id,
        packet id) of a persistent session's QoS 2 publish, stored with it); the future resolves once what it
        became is committed."""

    async def receive(self, topic: str, raw: bytes, *, principal: str | None) -> object: ...

    async def room_to_read(self) -> None:
        """Return once the intake may take more (what waits to be stored is bounded in bytes)."""


class SessionsPort(Protocol):
    """Where persistent sessions are kept (the outbox database)."""

    async def load(self) -> list[SessionRecord]: ...

    async def save(self, record: SessionRecord, *, if_changed: bool = False) -> None:
        """`if_changed`: no write when the store holds these subscriptions, app and expiry already."""

    async def delete(self, client_id: str) -> None: ...

    async def release(self, client_id: str, packet_id: int) -> None:
        """An inbound QoS 2 packet id stored with its intent is free again (PUBREL); returns once committed."""

    async def seen(self, client_id: str, at: int) -> None:
        """The session's client was there at `at` (ms since the epoch)."""

    @property
    def expiry_ms(self) -> int:
        """How long a persistent session outlives its client at most (--session-expiry)."""

    def now_ms(self) -> int: ...

    async def read_app_statuses(self, app: str, after: int, limit: int) -> list[tuple[int, str, bytes]]:
        """(seq, topic, payload) of an app's stored statuses after `after`."""


class Authenticator(Protocol):
    def __call__(self, username: str | None, password: bytes | None) -> Awaitable[bool]: ...


@dataclass(slots=True)
class EndpointSettings:
    host: str
    port: int
    logins: bool = False  # apps log in and are confined to outbox/{app}/
    window: int = 256
    max_packet: int = 1 << 20
    # Persistent sessions kept at most (docs/edge.md): per app with logins, else in all. A CONNECT that would
    # make one more is refused; one resuming its session is not.
    max_sessions: int = 1000
    max_queued_bytes: int = MAX_QUEUED_BYTES  # a session's messages other than statuses (session.py)
    max_retained_bytes: int = 16 << 20  # retained messages in all, topics and payloads: a new one past it is refused
    sweep_s: float = 1.0  # how often sessions are expired, and connected ones' last_seen kept fresh
    stats: dict[str, int] = field(default_factory=dict)


def keeps_session(connect: p.Connect) -> bool:
    """Whether the CONNECT asks for a session kept after it: 3.1.1 clean session 0; MQTT 5 an expiry above 0."""
    return (not connect.clean) if connect.session_expiry is None else connect.session_expiry > 0
