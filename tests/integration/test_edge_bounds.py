"""What one local app can make the outbox's MQTT endpoint hold and do is bounded: subscriptions per session
and their length, the writes their saves cost. In process, to count what is done: the real Outbox
(endpoint, store, intake) and raw MQTT clients on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import mqtt5
import pytest

from edge_outbox.errors import StorageError
from edge_outbox.mqtt import session as session_module
from edge_outbox.mqtt.server import MqttEndpoint
from edge_outbox.mqtt.session import MAX_SUBSCRIPTIONS
from edge_outbox.mqtt.topics import MAX_FILTER_BYTES
from edge_outbox.runner import Outbox
from edge_outbox.settings import OutboxSettings
from intent_contract import mqtt_packets as p
from intent_contract.mqtt_packets import ConnackCode, Type
from tests.support.edge import email
from tests.support.mqtt_raw import RawClient
from tests.support.net import free_port


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    running = Outbox(OutboxSettings(data_dir=tmp_path, listen_port=free_port(), forward=False))
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def endpoint_of(outbox: Outbox) -> MqttEndpoint:
    assert isinstance(outbox._transport, MqttEndpoint)
    return outbox._transport


def subacks(client: RawClient, count: int) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = []
    while len(out) < count:
        packet = client.receive()
        if isinstance(packet, p.Suback):
            out.append(packet.codes)
    return out


async def test_a_session_holds_a_bounded_number_of_short_subscriptions_saved_together(outbox: Outbox) -> None:
    store_calls: list[str] = []
    real_call = outbox.store.call

    async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        store_calls.append(getattr(fn, "__name__", repr(fn)))
        return await real_call(fn, *args, **kwargs)

    outbox.store.call = counted  # type: ignore[method-assign]
    client = RawClient(outbox.settings.listen_port)
    try:
        await asyncio.to_thread(client.connect, "many", clean=False)
        store_calls.clear()
        # One SUBACK each, all sent at once: before, each was a store operation of its own writing a JSON
        # copy of every subscription the session held (8,000 of them took the outbox to 547 MB).
        count = MAX_SUBSCRIPTIONS + 5
        client.send(b"".join(p.encode(p.Subscribe(i + 1, ((f"t/{i}", 1),))) for i in range(count)))
        codes = await asyncio.to_thread(subacks, client, count)
        assert codes == [(1,)] * MAX_SUBSCRIPTIONS + [(p.SUBACK_FAILURE,)] * 5
        assert len(store_calls) < count // 10, store_calls
        too_long = "t/" + "x" * MAX_FILTER_BYTES
        held_again = await asyncio.to_thread(client.subscribe, "t/0", 0)  # one it holds: no new one
        assert held_again == (0,)
        assert await asyncio.to_thread(client.subscribe, too_long, 1) == (p.SUBACK_FAILURE,)
        assert len(endpoint_of(outbox).sessions["many"].subscriptions) == MAX_SUBSCRIPTIONS
    finally:
        client.close()


async def test_a_session_that_wants_no_statuses_has_its_filters_scanned_only_when_they_change(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans = 0
    real_may_match = session_module.may_match

    def counted(topic_filter: str, shape: tuple[str | None, ...]) -> bool:
        nonlocal scans
        scans += 1
        return real_may_match(topic_filter, shape)

    monkeypatch.setattr(session_module, "may_match", counted)
    endpoint, feed = endpoint_of(outbox), outbox.feed
    assert feed is not None
    quiet, publisher = RawClient(outbox.settings.listen_port), RawClient(outbox.settings.listen_port)
    try:
        await asyncio.to_thread(quiet.connect, "quiet")
        quiet.send(b"".join(p.encode(p.Subscribe(i + 1, ((f"t/{i}", 1),))) for i in range(50)))
        await asyncio.to_thread(subacks, quiet, 50)
        await asyncio.to_thread(publisher.connect, "publisher")
        scanned_by_subscribing = scans
        for i in range(20):  # each commit wakes the quiet connection's pump
            await asyncio.to_thread(publisher.publish, "outbox/hvac/email.send", json.dumps(email(f"i{i}")).encode(), 1)
        session = endpoint.sessions["quiet"]
        async with asyncio.timeout(10):  # its pump has seen every status (and wanted none)
            while session.status.sent < feed.head or feed.head < 20:
                await asyncio.sleep(0.01)
        # Before, every wake scanned all 50 filters again (and each status event did, to match it).
        assert scans == scanned_by_subscribing
    finally:
        quiet.close()
        publisher.close()


def connack5(port: int, client_id: str) -> mqtt5.ConnAckPacket:
    """The CONNACK of an MQTT 5 CONNECT asking for a persistent session."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(bytes(mqtt5.ConnectPacket(client_id, clean_start=False, session_expiry_interval=60).write()))
        packet, _size = mqtt5.read(memoryview(sock.recv(1024)))
    assert isinstance(packet, mqtt5.ConnAckPacket)
    return packet


async def test_a_new_persistent_session_past_the_bound_is_refused(outbox: Outbox) -> None:
    endpoint = endpoint_of(outbox)
    endpoint.settings.max_sessions = 3
    port = outbox.settings.listen_port
    clients = [RawClient(port) for _ in range(6)]
    try:
        for index, client in enumerate(clients[:3]):
            assert (await asyncio.to_thread(client.connect, f"kept-{index}", clean=False)).code == 0
        # Before, there was no bound: one app opened 20,000 persistent sessions, each costing more.
        refused = await asyncio.to_thread(clients[3].connect, "one-more", clean=False)
        assert (refused.code, refused.session_present) == (ConnackCode.SERVER_UNAVAILABLE, False)
        assert (await asyncio.to_thread(connack5, port, "one-more-v5")).reason_code == 0x97  # quota exceeded
        assert "one-more" not in endpoint.sessions and "one-more-v5" not in endpoint.sessions
        assert (await asyncio.to_thread(clients[4].connect, "passing", clean=True)).code == 0  # not kept: served
        clients[0].close()
        resumed = await asyncio.to_thread(clients[5].connect, "kept-0", clean=False)  # its own: always
        assert (resumed.code, resumed.session_present) == (0, True)
    finally:
        for client in clients:
            client.close()


class CountedEvent(asyncio.Event):
    def __init__(self) -> None:
        super().__init__()
        self.sets = 0

    def set(self) -> None:
        self.sets += 1
        super().set()


async def test_a_commit_wakes_only_the_connections_that_subscribe_to_statuses(outbox: Outbox) -> None:
    endpoint, feed, port = endpoint_of(outbox), outbox.feed, outbox.settings.listen_port
    assert feed is not None
    idle = [RawClient(port) for _ in range(5)]
    listener, publisher = RawClient(port), RawClient(port)
    try:
        for index, client in enumerate(idle):
            await asyncio.to_thread(client.connect, f"idle-{index}")
        await asyncio.to_thread(listener.connect, "listener")
        assert await asyncio.to_thread(listener.subscribe, "outbox/hvac/status/#", 0) == (0,)
        await asyncio.to_thread(publisher.connect, "publisher")
        wakes = {}
        for client_id in [f"idle-{index}" for index in range(5)]:  # their pumps go on waiting on the old event
            connection = endpoint._connections[client_id]
            wakes[client_id] = connection.wake = CountedEvent()
        for i in range(10):
            await asyncio.to_thread(publisher.publish, "outbox/hvac/email.send", json.dumps(email(f"w{i}")).encode(), 1)
        heard = await asyncio.to_thread(listener.messages, 10)
        assert [json.loads(m.payload)["id"] for m in heard] == [f"w{i}" for i in range(10)]
        # Before, every commit woke the pump of every connection, idle ones with no subscription too.
        assert [wakes[f"idle-{index}"].sets for index in range(5)] == [0] * 5
        assert min(endpoint.all_positions()) == feed.head  # the idle sessions still hold no event back
    finally:
        for client in [*idle, listener, publisher]:
            client.close()


async def test_what_waits_for_an_absent_session_and_retained_messages_are_bounded_in_bytes(outbox: Outbox) -> None:
    endpoint, port = endpoint_of(outbox), outbox.settings.listen_port
    endpoint.settings.max_queued_bytes = endpoint.retained.max_bytes = 5 * 100_000
    away, publisher = RawClient(port), RawClient(port)
    try:
        await asyncio.to_thread(away.connect, "away", clean=False)
        await asyncio.to_thread(away.subscribe, "big/#", 1)
        away.send(p.Bare(Type.DISCONNECT))
        await asyncio.to_thread(away.closed_by_server)
        await asyncio.to_thread(publisher.connect, "publisher")
        for i in range(8):  # before, only a count bounded them (10,000 a session) and retained messages not at all
            await asyncio.to_thread(publisher.publish, f"big/{i}", bytes([i]) * 100_000, 1, retain=True)
        session = endpoint.sessions["away"]
        assert [m.payload[0] for m in session.queue] == [4, 5, 6, 7]  # the oldest dropped first
        assert session.queued_bytes <= 5 * 100_000 and session.dropped == 4
        kept = [m.topic for m in endpoint.retained.matching("#")]
        assert kept == [f"big/{i}" for i in range(4)]  # later: refused
        assert endpoint.retained.refused == 4
        await asyncio.to_thread(publisher.publish, "big/0", b"", 1, retain=True)  # clearing one makes room
        await asyncio.to_thread(publisher.publish, "big/7", b"x", 1, retain=True)
        assert sorted(m.topic for m in endpoint.retained.matching("#")) == ["big/1", "big/2", "big/3", "big/7"]
    finally:
        away.close()
        publisher.close()


async def test_an_app_sending_bad_input_in_a_loop_gets_a_log_line_now_and_then(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_outbox.mqtt")
    client = RawClient(outbox.settings.listen_port)
    try:
        await asyncio.to_thread(client.connect, "noisy")
        bad_filters = tuple((f"a/#/{i}", 1) for i in range(200))
        client.send(p.Subscribe(1, bad_filters))
        (codes,) = await asyncio.to_thread(subacks, client, 1)
        assert codes == (p.SUBACK_FAILURE,) * 200
        for _ in range(50):
            await asyncio.to_thread(client.publish, "outbox/hvac/status/x", b"{}", 0)
            await asyncio.to_thread(client.publish, "outbox/hvac/replay", b"not json", 1)
        await asyncio.to_thread(client.publish, "done", b"", 1)  # the QoS 0 publishes before it are handled
    finally:
        client.close()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("edge_outbox.mqtt")]
    # Before, a line for each: 200 for one SUBSCRIBE, 50 and 50 for the publishes.
    assert sum("may not subscribe" in line for line in lines) == 1
    assert sum("published to status topic" in line for line in lines) == 1
    assert sum("a replay request is" in line for line in lines) == 1


async def test_a_stop_ends_a_connection_that_has_not_sent_its_connect_yet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its handler, waiting for the CONNECT, was cancelled when the loop closed: asyncio logged an 'Exception in
    callback' traceback at every stop with such a client."""
    running = Outbox(OutboxSettings(data_dir=tmp_path, listen_port=free_port(), forward=False))
    await running.start()
    stranger = await asyncio.to_thread(socket.create_connection, ("127.0.0.1", running.settings.listen_port))
    try:
        await until_handlers(endpoint_of(running), 1)
        caplog.set_level(logging.ERROR)
        await running.stop()
        assert not endpoint_of(running)._handlers
    finally:
        stranger.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def until_handlers(endpoint: MqttEndpoint, count: int) -> None:
    for _ in range(500):
        if len(endpoint._handlers) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the connection was not accepted")


async def test_an_absent_session_that_wants_no_statuses_does_not_hold_back_their_pruning(outbox: Outbox) -> None:
    """Its position stayed where its client left it, and pruning keeps every event after the lowest position."""
    endpoint = endpoint_of(outbox)
    port = outbox.settings.listen_port

    def scenario() -> None:
        quiet = RawClient(port)
        quiet.connect("quiet", clean=False)  # a persistent session, no subscription
        quiet.close()
        publisher = RawClient(port)
        publisher.connect("publisher")
        for n in range(5):
            publisher.publish("outbox/app/email.send", json.dumps(email(f"q{n}")).encode(), qos=1)
        publisher.close()

    await asyncio.to_thread(scenario)
    for _ in range(500):  # the five `accepted` statuses committed
        if endpoint.feed.head >= 5:
            break
        await asyncio.sleep(0.01)
    assert endpoint.cursors()["quiet"] == endpoint.feed.head
    assert min(endpoint.all_positions()) == endpoint.feed.head


async def test_what_waits_to_be_stored_is_bounded_across_connections(tmp_path: Path) -> None:
    """On a full queue each connection stops reading at 1,000 unanswered publishes, but one dropped for that left
    them waiting, and a QoS 0 app that came back added 1,000 more each time (12 MB per reconnection with 10 KB
    intents, without end). Past `max_waiting_bytes` of payloads waiting from all connections, nothing more is read."""
    settings = OutboxSettings(data_dir=tmp_path, listen_port=free_port(), forward=False, max_queue_items=1)
    running = Outbox(settings)
    await running.start()
    intake = running.intake
    intake.max_waiting_bytes = 1 << 20  # a small bound, to reach it with a few publishes
    body = json.dumps(email(text="x" * 100_000)).encode()
    clients = [RawClient(settings.listen_port) for _ in range(3)]
    try:
        await asyncio.to_thread(clients[0].connect, "filler")
        await asyncio.to_thread(clients[0].publish, "outbox/app/email.send", json.dumps(email()).encode(), 1)
        for number, client in enumerate(clients[1:]):  # one after another, as an app that comes back
            await asyncio.to_thread(client.connect, f"qos0-{number}")
            client.sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):  # what the socket takes; the rest is never sent
                for _ in range(30):
                    client.sock.sendall(p.encode(p.Publish("outbox/app/email.send", body, 0, False, False, None)))
        async with asyncio.timeout(20):  # the endpoint stopped reading, or took every publish sent
            while not (getattr(intake, "reads_paused", 0) >= 1 or intake.health.held >= 60):
                await asyncio.sleep(0.01)
        # Each connection may read one more chunk past the bound, not all it is sent.
        assert intake.health.held * len(body) <= intake.max_waiting_bytes + 2 * (len(body) + 65536)
    finally:
        for client in clients:
            client.close()
        await running.stop()


async def test_every_publish_waiting_behind_a_full_queue_is_counted_as_held(tmp_path: Path) -> None:
    """`status` showed at most 2,000 publishes held (the batch the intake retries), however many waited."""
    settings = OutboxSettings(data_dir=tmp_path, listen_port=free_port(), forward=False, max_queue_items=1)
    running = Outbox(settings)
    await running.start()
    body = p.encode(p.Publish("outbox/app/email.send", json.dumps(email()).encode(), 0, False, False, None))
    clients = [RawClient(settings.listen_port) for _ in range(4)]
    try:
        await asyncio.to_thread(clients[0].connect, "filler")
        await asyncio.to_thread(clients[0].publish, "outbox/app/email.send", json.dumps(email()).encode(), 1)
        for number, client in enumerate(clients[1:]):  # 3 x 1,200: each connection takes at least 1,000
            await asyncio.to_thread(client.connect, f"qos0-{number}")
            client.send(body * 1200)
        async with asyncio.timeout(20):
            while running.intake.health.held < 3000:
                await asyncio.sleep(0.01)
    finally:
        for client in clients:
            client.close()
        await running.stop()


async def test_a_status_read_the_store_fails_is_tried_again(outbox: Outbox, caplog: pytest.LogCaptureFixture) -> None:
    """A full disk fails every group commit, and the reads grouped with its writes: one failed read of statuses
    ended the connection's pump without a word, and the app heard no status (nor any message) until it
    reconnected. As the attach client does, the read is tried again."""
    feed, port = outbox.feed, outbox.settings.listen_port
    assert feed is not None
    real_read = feed.read
    failures = [StorageError("could not commit: database or disk is full")]

    async def failing_once(after: int, limit: int) -> Any:
        if failures:
            raise failures.pop()
        return await real_read(after, limit)

    feed.read = failing_once  # type: ignore[method-assign]
    listener, publisher = RawClient(port), RawClient(port)
    try:
        await asyncio.to_thread(listener.connect, "listener")
        assert await asyncio.to_thread(listener.subscribe, "outbox/hvac/status/#", 0) == (0,)
        await asyncio.to_thread(publisher.connect, "publisher")
        with caplog.at_level(logging.WARNING, logger="edge_outbox.mqtt.server"):
            for i in range(3):
                await asyncio.to_thread(
                    publisher.publish, "outbox/hvac/email.send", json.dumps(email(f"s{i}")).encode(), 1
                )
            heard = await asyncio.to_thread(listener.messages, 3)
        assert [json.loads(m.payload)["id"] for m in heard] == ["s0", "s1", "s2"]
        assert not failures and "wait for the store: could not commit" in caplog.text
    finally:
        for client in (listener, publisher):
            client.close()
