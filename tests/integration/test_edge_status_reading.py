"""The outbox reads status events back only while an app subscribes to statuses (bench/findings.md F42).

In process, to see the feed: the real Outbox (endpoint, store, intake) and raw MQTT clients on loopback.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from edge_outbox.runner import Outbox
from edge_outbox.settings import OutboxSettings
from intent_contract import mqtt_packets as p
from intent_contract.mqtt_packets import Type
from tests.support.edge import email
from tests.support.mqtt_raw import RawClient
from tests.support.net import free_port

STATUSES = "outbox/hvac/status/+"


def publish(client: RawClient, *intent_ids: str) -> None:
    for intent_id in intent_ids:
        client.publish("outbox/hvac/email.send", json.dumps(email(intent_id)).encode(), 1)


def leave(client: RawClient) -> None:
    client.send(p.Bare(Type.DISCONNECT))
    assert client.closed_by_server()


async def test_statuses_are_read_back_only_while_a_session_subscribes_to_them(tmp_path: Path) -> None:
    settings = OutboxSettings(data_dir=tmp_path, listen_port=free_port(), forward=False)
    outbox = Outbox(settings)
    await outbox.start()
    app, kept = RawClient(settings.listen_port), RawClient(settings.listen_port)
    try:
        feed = outbox.feed
        assert feed is not None
        await asyncio.to_thread(app.connect, "app")
        await asyncio.to_thread(publish, app, "quiet-1", "quiet-2")
        assert not feed.wanted
        async with asyncio.timeout(5):  # the head still moves: sessions' positions and pruning follow it
            while feed.head < 2:
                await asyncio.sleep(0.01)

        assert await asyncio.to_thread(app.subscribe, STATUSES, 1) == (1,)
        assert feed.wanted
        await asyncio.to_thread(publish, app, "heard-1", "heard-2")
        heard = await asyncio.to_thread(app.messages, 2)
        assert [json.loads(m.payload)["id"] for m in heard] == ["heard-1", "heard-2"]

        await asyncio.to_thread(leave, app)  # a clean session goes, and its subscriptions with it
        async with asyncio.timeout(5):
            while feed.wanted:
                await asyncio.sleep(0.01)

        await asyncio.to_thread(kept.connect, "kept", clean=False)
        await asyncio.to_thread(kept.subscribe, STATUSES, 1)
        assert feed.wanted
        await asyncio.to_thread(leave, kept)
    finally:
        app.close()
        kept.close()
        await outbox.stop()

    # A kept session's subscription counts while its app is away, from the outbox's start.
    again = Outbox(settings)
    await again.start()
    try:
        assert again.feed is not None and again.feed.wanted
        events = await again.feed.read(0, 10)
    finally:
        await again.stop()
    # Every event is there to read, those committed while nobody read them included, in order.
    assert [e.id for e in events] == ["quiet-1", "quiet-2", "heard-1", "heard-2"]
