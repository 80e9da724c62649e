"""The embedded broker knows whether a status topic has any subscriber (so unwanted statuses are skipped)."""

from __future__ import annotations

import asyncio

import aiomqtt

from edge_outbox.broker import EmbeddedBroker
from tests.helpers import free_port


async def wait_for(predicate: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.02)


async def test_has_subscriber_follows_subscriptions_and_persistent_sessions() -> None:
    port = free_port()
    broker = EmbeddedBroker("127.0.0.1", port, intake=None, users={})  # type: ignore[arg-type]
    await broker.start()
    try:
        topic_a, topic_b = "outbox/a/status/i-1", "outbox/b/status/i-1"
        assert not broker.has_subscriber(topic_a)
        async with aiomqtt.Client("127.0.0.1", port, identifier="app-a", clean_session=False) as client:
            await client.subscribe("outbox/a/status/#", qos=1)
            await wait_for(lambda: broker.has_subscriber(topic_a))
            assert not broker.has_subscriber(topic_b)
            assert not broker.has_subscriber("outbox/a/email.send")
        # Disconnected, its persistent session still wants the statuses (the broker queues them).
        await asyncio.sleep(0.2)
        assert broker.has_subscriber(topic_a)
        async with aiomqtt.Client("127.0.0.1", port, identifier="app-b") as client:
            await client.subscribe("outbox/+/status/+", qos=1)
            await wait_for(lambda: broker.has_subscriber(topic_b))
    finally:
        await broker.stop()
