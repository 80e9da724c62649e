"""The embedded MQTT broker (amqtt) with intake that commits before it acknowledges.

amqtt 0.12 sends the PUBACK before any plugin hook runs (ProtocolHandler._handle_qos1_message_flow),
so a plugin alone cannot promise durability. Instead each connection's protocol handler is an
`_IntakeHandler`, which hands intake topics to the Intake and sends the PUBACK only once the intent is
committed. amqtt is pinned (==0.12.1) because this leans on its handler's private flow; the kill test
in tests/integration proves the guarantee still holds after any upgrade.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import BrokerError
from amqtt.mqtt.constants import QOS_0, QOS_1
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.protocol.handler import INCOMING
from amqtt.mqtt.puback import PubackPacket
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from edge_outbox.apps_auth import verify_password
from edge_outbox.errors import ConfigError
from edge_outbox.intake import Intake
from edge_outbox.intake_rules import TOPIC_ROOT

log = logging.getLogger(__name__)


def is_intake_topic(topic: str) -> bool:
    """Everything under outbox/ except the status topics the outbox itself publishes."""
    if not topic.startswith(TOPIC_ROOT + "/"):
        return False
    parts = topic.split("/")
    return not (len(parts) == 4 and parts[2] == "status")


class _IntakeHandler(BrokerProtocolHandler):
    intake: Intake
    logins: bool

    async def _handle_message_flow(self, app_message: Any) -> None:
        if app_message.direction != INCOMING or not is_intake_topic(app_message.topic):
            await super()._handle_message_flow(app_message)
            return
        principal = self.session.username if (self.logins and self.session is not None) else None
        # Returns only once the intent is committed (it waits out a full disk), so the PUBACK below
        # always means "on disk".
        await self.intake.receive(app_message.topic, bytes(app_message.data), principal=principal)
        if app_message.qos == QOS_1:
            puback = PubackPacket.build(app_message.packet_id)
            await self._send_packet(puback)
            app_message.puback_packet = puback
        elif app_message.qos != QOS_0:
            # QoS 2: committed above; let amqtt run its PUBREC/PUBREL/PUBCOMP exchange.
            await super()._handle_message_flow(app_message)


class _OutboxBroker(Broker):
    def __init__(self, config: dict[str, Any], intake: Intake, *, logins: bool) -> None:
        super().__init__(config)
        self._intake = intake
        self._logins = logins

    async def _initialize_client_session(self, *args: Any, **kwargs: Any) -> Any:
        handler, session = await super()._initialize_client_session(*args, **kwargs)
        # amqtt builds the handler inside a classmethod we cannot reach; specialise the instance.
        handler.__class__ = _IntakeHandler
        handler.intake = self._intake
        handler.logins = self._logins
        return handler, session


class EmbeddedBroker:
    """Starts and stops the local broker; publishes status messages into it."""

    def __init__(self, host: str, port: int, intake: Intake, users: dict[str, str]) -> None:
        plugins: dict[str, Any] = {"edge_outbox.broker.AppAuthPlugin": {"users": users}}
        if users:
            plugins["edge_outbox.broker.AppTopicPlugin"] = {"enabled": True}
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": plugins,
        }
        self._address = f"{host}:{port}"
        self._broker = _OutboxBroker(config, intake, logins=bool(users))

    async def start(self) -> None:
        # amqtt logs a traceback when it cannot bind; we report a one-line error instead.
        amqtt_log = logging.getLogger("amqtt.broker")
        amqtt_log.addFilter(_drop_startup_traceback)
        try:
            await self._broker.start()
        except BrokerError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"{self._address} is already in use: choose another with --listen HOST:PORT, "
                    "or attach to the broker already there with --attach mqtt://HOST:PORT"
                ) from None
            raise ConfigError(f"could not start the embedded broker on {self._address}: {cause or exc}") from None
        finally:
            amqtt_log.removeFilter(_drop_startup_traceback)

    async def stop(self) -> None:
        await self._broker.shutdown()

    async def publish(self, topic: str, payload: bytes) -> None:
        await self._broker.internal_message_broadcast(topic, payload, QOS_1)

    def has_subscriber(self, topic: str) -> bool:
        """Whether any session (connected or persistent) subscribes to a filter matching `topic`.

        A status nobody subscribes to is dropped by MQTT anyway; asking first spares amqtt's
        broadcast machinery (a task and an asyncio.wait per message) and us the JSON.
        """
        broker = self._broker
        return any(broker._matches(topic, topic_filter) for topic_filter in broker._subscriptions)


def _drop_startup_traceback(record: logging.LogRecord) -> bool:
    return record.getMessage() != "Broker startup failed"


class AppAuthPlugin(BaseAuthPlugin):
    """Lets a client in when its username is a known app and the password matches, or anyone without users."""

    @dataclass
    class Config:
        users: dict[str, str] = field(default_factory=dict)

    async def authenticate(self, *, session: Session) -> bool | None:
        users: dict[str, str] = self.config.users
        if not users:
            return True
        stored = users.get(session.username or "")
        return stored is not None and session.password is not None and verify_password(session.password, stored)


class AppTopicPlugin(BaseTopicPlugin):
    """With logins: an app publishes only under outbox/{app}/ and subscribes only to its own statuses."""

    @dataclass
    class Config:
        enabled: bool = True

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool | None:
        if session is None or topic is None or not session.username:
            return False
        own = f"outbox/{session.username}/"
        if action is Action.PUBLISH:
            return topic.startswith(own) and not topic.startswith(own + "status/")
        return topic.startswith(own + "status/")
