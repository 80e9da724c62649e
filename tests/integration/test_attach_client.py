"""The attach client's MQTT behaviour against a scripted broker on a loopback socket.

The broker here is raw MQTT 3.1.1 bytes on a real TCP connection; the intake is a stand-in whose
commits the test finishes by hand, so the order and timing of acknowledgements can be checked
(tests/integration/test_edge_attach.py runs the whole outbox against Mosquitto).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from edge_outbox import attach, attach_drops, attach_peers
from edge_outbox.attach import AttachedClient
from edge_outbox.db import StatusEvent
from edge_outbox.errors import StorageError
from edge_outbox.intake import Intake
from edge_outbox.settings import AttachTarget
from edge_outbox.states import State
from edge_outbox.status import StatusFeed
from intent_contract import mqtt_packets as p
from intent_contract.mqtt_packets import Type


@dataclass
class HeldIntake:
    """Takes publishes and commits them only when the test says so."""

    taken: list[tuple[str, bytes, asyncio.Future[Any]]] = field(default_factory=list)
    grew: asyncio.Event = field(default_factory=asyncio.Event)

    def submit(
        self, topic: str, raw: bytes, *, expiry_s: int | None = None, size: int | None = None
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.taken.append((topic, raw, future))
        self.grew.set()
        return future

    def commit(self, index: int) -> None:
        self.taken[index][2].set_result(None)

    async def commit_until(self, total: int) -> None:
        """Commit what was taken, as it is taken, until `total` have been."""
        committed = 0
        while committed < total:
            await self.wait_for(committed + 1)
            for index in range(committed, len(self.taken)):
                self.commit(index)
            committed = len(self.taken)

    async def wait_for(self, count: int) -> None:
        while len(self.taken) < count:
            self.grew.clear()
            await asyncio.wait_for(self.grew.wait(), 10)


class Peer:
    """One connection from the client, seen from the broker's side."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._framer = p.Framer(1 << 20)
        self._packets: list[tuple[int, bytes]] = []  # decoded as they are taken: after an MQTT 5 CONNECT, none is

    async def next(self) -> p.Packet:
        while not self._packets:
            data = await asyncio.wait_for(self.reader.read(1 << 16), 10)
            if not data:
                raise EOFError("the client closed the connection")
            self._packets += self._framer.feed(data)
        return p.decode(*self._packets.pop(0))

    async def refused_mqtt5(self) -> bool:
        """Answer an MQTT 5 CONNECT as a broker that speaks 3.1.1 only does (CONNACK 1) and close; False for a
        3.1.1 one, left to be read."""
        connect = await self.next()
        assert isinstance(connect, p.Connect)
        if connect.level != 5:
            self._packets.insert(0, (0x10, p.encode(connect)[2:]))
            return False
        self.writer.write(p.encode(p.Connack(False, p.ConnackCode.BAD_PROTOCOL_VERSION)))
        self.writer.close()
        return True

    async def handshake(self, *, session_present: bool = False) -> p.Connect:
        connect = await self.next()
        assert isinstance(connect, p.Connect)
        subscribe = await self.next()
        assert subscribe == p.Subscribe(attach.SUBSCRIBE_ID, ((attach.INTAKE_FILTER, 1),))
        hello = await self.next()  # to any other outbox attached to this broker (edge_outbox.attach_peers)
        assert isinstance(hello, p.Publish) and (hello.topic, hello.qos) == (attach_peers.PEER_TOPIC, 0)
        drops = await self.next()  # the broker's count of messages it dropped (edge_outbox.attach_drops)
        assert drops == p.Subscribe(attach_drops.DROPS_SUBSCRIBE_ID, ((attach_drops.DROPPED_TOPIC, 0),))
        self.writer.write(p.encode(p.Connack(session_present, 0)) + p.encode(p.Suback(subscribe.packet_id, (1,))))
        return connect

    def publish(self, packet_ids: range, qos: int = 1, *, dup: bool = False) -> None:
        """A publish for each number, with it as its packet id (none at QoS 0); `dup`: sent again, as a broker
        sends what was not acknowledged on a session's earlier connection."""
        self.writer.write(
            b"".join(
                p.encode_publish(
                    "outbox/app/email.send", b'{"n": %d}' % n, qos, n if qos else None, retain=False, dup=dup
                )
                for n in packet_ids
            )
        )

    async def pubacks(self, count: int) -> list[int]:
        ids: list[int] = []
        while len(ids) < count:
            packet = await self.next()
            if isinstance(packet, p.PacketIdOnly) and packet.type is Type.PUBACK:
                ids.append(packet.packet_id)
        return ids


class ScriptedBroker:
    """A broker that speaks MQTT 3.1.1 only: it refuses the client's MQTT 5 CONNECT as such a broker does."""

    def __init__(self) -> None:
        self.refused_mqtt5 = 0
        self.peers: asyncio.Queue[Peer] = asyncio.Queue()
        self._all: list[Peer] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> ScriptedBroker:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = Peer(reader, writer)
            self._all.append(peer)
            if await peer.refused_mqtt5():
                self.refused_mqtt5 += 1
                return
            await self.peers.put(peer)

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for peer in self._all:
            peer.writer.close()
            with contextlib.suppress(ConnectionError):
                await peer.writer.wait_closed()
        await self.server.wait_closed()

    async def connection(self) -> Peer:
        return await asyncio.wait_for(self.peers.get(), 10)

    async def session(self, *, present: bool = False) -> tuple[Peer, p.Connect]:
        """The client's next connection, answered with CONNACK and SUBACK; and its CONNECT."""
        peer = await self.connection()
        return peer, await peer.handshake(session_present=present)


@pytest.fixture
async def broker() -> AsyncIterator[ScriptedBroker]:
    async with ScriptedBroker() as scripted:
        yield scripted


async def _no_events(_after: int, _limit: int) -> list[Any]:
    return []


@contextlib.asynccontextmanager
async def running(
    broker: ScriptedBroker, intake: HeldIntake | None = None, feed: StatusFeed | None = None
) -> AsyncIterator[AttachedClient]:
    """An attach client for `broker`, started, and stopped at the end."""
    target = AttachTarget("127.0.0.1", broker.port, "site", "secret", "outbox-test")
    client = AttachedClient(target, cast(Intake, intake or HeldIntake()), feed or StatusFeed(_no_events, 0), 0)
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


async def test_acknowledges_in_arrival_order_and_only_after_commit(broker: ScriptedBroker) -> None:
    intake = HeldIntake()
    async with running(broker, intake):
        peer, connect = await broker.session()
        assert (connect.client_id, connect.clean, connect.username, connect.password) == (
            "outbox-test", False, "site", b"secret",
        )  # fmt: skip
        peer.publish(range(1, 11))
        await intake.wait_for(10)
        for index in range(9, 0, -1):  # the last nine commit first: nothing may be acknowledged before 1
            intake.commit(index)
        for _ in range(10):  # turns of the loop in which a wrong client would acknowledge 2-10
            await asyncio.sleep(0)
        intake.commit(0)
        assert await peer.pubacks(10) == list(range(1, 11))


async def held_back(broker: ScriptedBroker, intake: HeldIntake, total: int, pause_s: float) -> Peer:
    """`total` publishes sent at once with no commit: the client takes MAX_UNCOMMITTED, then `pause_s` passes."""
    peer, _connect = await broker.session()
    peer.publish(range(1, total + 1))
    await intake.wait_for(attach.MAX_UNCOMMITTED)
    await asyncio.sleep(pause_s)
    return peer


async def test_reading_pauses_while_too_many_wait_for_their_commit(broker: ScriptedBroker) -> None:
    intake = HeldIntake()
    total = 20 * attach.MAX_UNCOMMITTED
    async with running(broker, intake):
        # 0.3 s: time for a client that kept reading to take far more (the 700 KB sit in loopback's buffers).
        peer = await held_back(broker, intake, total, 0.3)
        held = len(intake.taken)
        # At most one read's worth past the limit; the rest stays with the broker (here: in TCP's buffers).
        assert held < attach.MAX_UNCOMMITTED + attach.READ_CHUNK // 30, held
        await intake.commit_until(total)  # the client reads on as room frees up
        assert await peer.pubacks(total) == list(range(1, total + 1))


async def test_qos_0_messages_count_towards_the_uncommitted_limit(broker: ScriptedBroker) -> None:
    """An app publishing at QoS 0 while commits are held: before, nothing bounded what the client read and kept."""
    intake = HeldIntake()
    total = 20 * attach.MAX_UNCOMMITTED
    async with running(broker, intake):
        peer, _connect = await broker.session()
        peer.publish(range(1, total + 1), qos=0)
        peer.publish(range(1, 2))  # one at QoS 1 behind them: acknowledged once all before it are committed
        await intake.wait_for(attach.MAX_UNCOMMITTED)
        await asyncio.sleep(0.3)  # time for a client that kept reading to take far more
        held = len(intake.taken)
        assert held < attach.MAX_UNCOMMITTED + attach.READ_CHUNK // 30, held
        await intake.commit_until(total + 1)
        assert await peer.pubacks(1) == [1]
        assert [json.loads(raw)["n"] for _topic, raw, _done in intake.taken] == [*range(1, total + 1), 1]


async def test_a_pause_in_reading_is_not_taken_for_a_silent_broker(
    broker: ScriptedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits held up (a full disk) pause reading; the PINGRESPs wait unread, and the link stays up."""
    monkeypatch.setattr(attach, "KEEPALIVE_S", 1)  # silent for 1.5 s: gone
    intake = HeldIntake()
    total = 2 * attach.MAX_UNCOMMITTED
    async with running(broker, intake):
        # 3.5 s: more than twice the silence allowed, with reading paused throughout.
        peer = await held_back(broker, intake, total, 3.5)
        await intake.commit_until(total)
        assert await peer.pubacks(total) == list(range(1, total + 1))  # on the same connection
        assert broker.peers.empty()


async def test_a_failed_commit_drops_the_connection_so_the_broker_sends_again(
    broker: ScriptedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    intake = HeldIntake()
    async with running(broker, intake):
        peer, _connect = await broker.session()
        peer.publish(range(1, 4))
        await intake.wait_for(3)
        intake.commit(0)
        assert await peer.pubacks(1) == [1]
        with caplog.at_level(logging.ERROR, logger="edge_outbox.attach"):
            intake.taken[1][2].set_exception(OSError("disk gone"))
            intake.commit(2)  # after the failed one: must not be acknowledged either
            with pytest.raises(EOFError):
                await peer.pubacks(1)
        assert "attach intake failed: disk gone" in caplog.text
        _again, connect = await broker.session(present=True)  # the client comes back, on its persistent session
        assert not connect.clean


async def test_an_unexpected_error_on_the_link_is_logged_and_the_link_connected_again(
    broker: ScriptedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """An error no handler expected (a defect: here the intake's) ended the attach task without a line, with
    `connected` still set: the outbox looked attached and healthy, and took nothing more."""

    class FailingOnce(HeldIntake):
        def submit(self, topic: str, raw: bytes, **kw: Any) -> asyncio.Future[Any]:
            if not self.taken:
                self.taken.append((topic, raw, asyncio.get_running_loop().create_future()))
                raise RuntimeError("a defect")
            return super().submit(topic, raw, **kw)

    intake = FailingOnce()
    with caplog.at_level(logging.ERROR, logger="edge_outbox.attach"):
        async with running(broker, intake) as client:
            peer, _connect = await broker.session()
            peer.publish(range(1, 2))
            again, _connect = await broker.session(present=True)  # connected again, on its session
            again.publish(range(1, 2))  # the broker sends the unacknowledged one again
            await intake.wait_for(2)
            intake.commit(1)
            assert await again.pubacks(1) == [1]
            assert client.connected.is_set()
    assert "attach link failed unexpectedly; reconnecting" in caplog.text
    assert "RuntimeError: a defect" in caplog.text


async def test_a_stop_acknowledges_what_was_taken_once_committed_before_it_disconnects(broker: ScriptedBroker) -> None:
    """The stop sent DISCONNECT at once: what was committed and not yet acknowledged came again after the restart,
    and an intent without an app's id was then taken a second time, as a new one."""
    intake = HeldIntake()
    client = AttachedClient(
        AttachTarget("127.0.0.1", broker.port, None, None, "outbox-test"),
        cast(Intake, intake),
        StatusFeed(_no_events, 0),
        0,
    )
    await client.start()
    peer, _connect = await broker.session()
    peer.publish(range(1, 6))
    await intake.wait_for(5)
    intake.commit(0)
    assert await peer.pubacks(1) == [1]
    stopping = asyncio.create_task(client.stop())
    for _ in range(10):  # turns of the loop in which a wrong client disconnects
        await asyncio.sleep(0)
    peer.publish(range(6, 8))  # after the stop began: not taken, so not acknowledged (the broker sends them again)
    for index in range(1, 5):
        intake.commit(index)
    rest = [await peer.next() for _ in range(5)]
    await stopping
    assert rest == [*(p.PacketIdOnly(Type.PUBACK, n) for n in range(2, 6)), p.Bare(Type.DISCONNECT)]
    assert len(intake.taken) == 5


async def test_a_message_taken_before_the_connection_was_lost_is_not_taken_again_when_the_broker_resends_it(
    broker: ScriptedBroker,
) -> None:
    """The connection ended (the broker restarted, the network broke) while commits were under way: the broker sends
    what was not acknowledged again, DUP=1 under the same packet ids, and each such intent without an app's id was
    taken a second time, as a new one, once its first commit was done (an email sent twice)."""
    intake = HeldIntake()
    async with running(broker, intake):
        peer, _connect = await broker.session()
        peer.publish(range(1, 6))
        await intake.wait_for(5)
        intake.commit(0)
        assert await peer.pubacks(1) == [1]
        peer.writer.close()  # 2-5 taken, their commits under way, not acknowledged
        again, _connect = await broker.session(present=True)
        again.publish(range(2, 6), dup=True)  # the same messages again
        again.publish(range(6, 7))  # a new one, after them
        await intake.wait_for(6)
        for index in range(1, len(intake.taken)):
            intake.commit(index)
        assert await again.pubacks(5) == [2, 3, 4, 5, 6]
        assert [raw for _topic, raw, _done in intake.taken] == [b'{"n": %d}' % n for n in range(1, 7)]


async def test_a_message_acknowledged_as_the_link_broke_is_not_taken_again_when_the_broker_resends_it(
    broker: ScriptedBroker,
) -> None:
    """Mosquitto stopped (restarted) before it read the outbox's last PUBACKs, and sent those messages again after
    its restart: each intent without an app's id was taken twice (about 100 in 6,000 over two restarts)."""
    intake = HeldIntake()
    async with running(broker, intake):
        peer, _connect = await broker.session()
        peer.publish(range(1, 4))
        await intake.commit_until(3)
        assert await peer.pubacks(3) == [1, 2, 3]
        peer.writer.close()
        again, _connect = await broker.session(present=True)
        again.publish(range(2, 4), dup=True)  # it had not read the acknowledgements of 2 and 3
        again.publish(range(1, 2))  # 1 was acknowledged: its packet id goes to a new message
        await intake.wait_for(4)
        intake.commit(3)
        assert await again.pubacks(3) == [2, 3, 1]
        assert len(intake.taken) == 4


async def test_a_message_whose_first_commit_failed_is_taken_again_when_the_broker_resends_it(
    broker: ScriptedBroker,
) -> None:
    intake = HeldIntake()
    async with running(broker, intake):
        peer, _connect = await broker.session()
        peer.publish(range(1, 3))
        await intake.wait_for(2)
        peer.writer.close()
        again, _connect = await broker.session(present=True)
        intake.taken[0][2].set_exception(OSError("disk gone"))  # not stored: acknowledged, it would be lost
        intake.commit(1)
        again.publish(range(1, 3), dup=True)
        await intake.wait_for(3)
        intake.commit(2)
        assert await again.pubacks(2) == [1, 2]
        assert [raw for _topic, raw, _done in intake.taken] == [b'{"n": 1}', b'{"n": 2}', b'{"n": 1}']


async def test_a_refused_connect_is_logged_and_retried(
    broker: ScriptedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="edge_outbox.attach"):
        async with running(broker) as client:
            peer = await broker.connection()
            await peer.next()
            peer.writer.write(p.encode(p.Connack(False, p.ConnackCode.BAD_CREDENTIALS)))
            await broker.session()
            await asyncio.wait_for(client.connected.wait(), 10)
    assert "attach broker refused the connection: bad credentials" in caplog.text
    assert "secret" not in caplog.text


async def test_statuses_not_acknowledged_are_sent_again_on_the_next_connection(broker: ScriptedBroker) -> None:
    feed = StatusFeed(_no_events, 0)
    async with running(broker, feed=feed) as client:
        peer, _connect = await broker.session()
        feed.on_events(
            [StatusEvent(seq, f"i{seq}", "app", "email.send", State.ACCEPTED, "", "", 0) for seq in (1, 2, 3)]
        )
        first = [await peer.next() for _ in range(3)]
        assert [(m.topic, json.loads(m.payload)["seq"], m.qos) for m in first if isinstance(m, p.Publish)] == [
            (f"outbox/app/status/i{seq}", seq, 1) for seq in (1, 2, 3)
        ]
        assert isinstance(first[0], p.Publish) and first[0].packet_id is not None
        peer.writer.write(p.encode(p.PacketIdOnly(Type.PUBACK, first[0].packet_id)))  # only the first is acknowledged

        async def first_acknowledged() -> None:
            while client.status.position < 1:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(first_acknowledged(), 10)
        peer.writer.close()
        again, _connect = await broker.session(present=True)
        resent = [await again.next() for _ in range(2)]
        assert [json.loads(m.payload)["seq"] for m in resent if isinstance(m, p.Publish)] == [2, 3]
        assert client.status.position == 1


async def test_a_silent_broker_is_dropped_and_connected_again(
    broker: ScriptedBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(attach, "KEEPALIVE_S", 1)
    with caplog.at_level(logging.WARNING, logger="edge_outbox.attach"):
        async with running(broker):
            peer, _connect = await broker.session()
            assert isinstance(await peer.next(), p.Bare)  # a PINGREQ, left unanswered
            await broker.session(present=True)
    assert "attach broker silent (or not reading) for 1 s" in caplog.text


async def test_a_broker_that_ends_each_connection_at_once_is_retried_with_growing_backoff(
    broker: ScriptedBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another client taking the same client id over, say: the backoff started over after every CONNACK, so the
    outbox connected about twice a second for ever, a warning each time. It grows until a connection lasts."""
    attempts: list[int] = []

    def no_wait(attempt: int, **_kwargs: Any) -> float:
        attempts.append(attempt)
        return 0.0

    monkeypatch.setattr(attach, "compute_backoff", no_wait)
    with caplog.at_level(logging.WARNING, logger="edge_outbox.attach"):
        async with running(broker):
            for _ in range(4):
                peer, _connect = await broker.session()
                peer.writer.close()
            await broker.session()
    assert attempts == [1, 2, 3, 4]
    assert "(is another client attached as outbox-test?)" in caplog.text


async def test_a_broker_that_does_not_read_is_not_read_from_and_is_dropped(
    broker: ScriptedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It sent publishes and read none of the acknowledgements: the client's write buffer grew by all it was sent
    (286 KB in 20 s here), and the link stayed up, the broker heard all along."""
    monkeypatch.setattr(attach, "KEEPALIVE_S", 1)
    intake = HeldIntake()
    async with running(broker, intake) as client:
        peer, _connect = await broker.session()
        await asyncio.wait_for(client.connected.wait(), 10)
        peer.writer.transport.pause_reading()  # and small buffers, so the client's writes back up soon
        peer.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert client._link is not None
        client._link.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

        async def flood() -> None:
            while True:  # until the client stops reading, when this drain waits; the same ids again and again
                peer.publish(range(1, 5001))
                await peer.writer.drain()

        async def commit_all() -> None:
            while True:
                await intake.wait_for(len(intake.taken) + 1)
                for _topic, _raw, done in intake.taken:
                    if not done.done():
                        done.set_result(None)

        tasks = [asyncio.create_task(flood()), asyncio.create_task(commit_all())]
        try:
            await broker.session(present=True)  # the client dropped the first connection and came back
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            peer.writer.transport.abort()


async def test_a_status_read_the_store_fails_is_tried_again(
    broker: ScriptedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk fails every group commit, and the reads grouped with its writes: one failed read of statuses ended
    the client's status task without a word, and no status went to the broker until the connection ended (seen:
    1,000 intents stored once the disk had room again, and none of their statuses published)."""
    stored = [StatusEvent(seq, f"i{seq}", "app", "email.send", State.ACCEPTED, "", "", 0) for seq in (1, 2, 3)]
    failures = [StorageError("could not commit: database or disk is full")]

    async def read_after(after: int, limit: int) -> list[StatusEvent]:
        if failures:
            raise failures.pop()
        return [e for e in stored if e.seq > after][:limit]

    with caplog.at_level(logging.WARNING, logger="edge_outbox.attach"):
        async with running(broker, feed=StatusFeed(read_after, 3)):  # committed before the start: read from the store
            peer, _connect = await broker.session()
            published = [packet for _ in range(3) if isinstance(packet := await peer.next(), p.Publish)]
            assert [json.loads(m.payload)["seq"] for m in published] == [1, 2, 3]
    assert "statuses to the attach broker wait for the store: could not commit" in caplog.text


async def test_a_broker_that_speaks_mqtt_3_1_1_only_is_attached_to_with_it(
    broker: ScriptedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """The client asks for MQTT 5 first; a 3.1.1 broker refuses that CONNECT (CONNACK 1, unacceptable protocol
    version), and the client attaches with 3.1.1 at once and from then on, saying what it goes without."""
    with caplog.at_level(logging.INFO, logger="edge_outbox.attach"):
        async with running(broker) as client:
            peer, connect = await broker.session()
            assert connect.level == 4
            assert not connect.clean
            await asyncio.wait_for(client.connected.wait(), 10)
            peer.writer.close()  # a lost connection: the next is 3.1.1 at once, not MQTT 5 refused again
            _again, connect = await broker.session(present=True)
            assert connect.level == 4
    assert broker.refused_mqtt5 == 1
    assert caplog.text.count("the broker speaks MQTT 3.1.1 only") == 1
    assert "attaching with MQTT 3.1.1, through which an app's message expiry does not reach the outbox" in caplog.text
    assert "attached; subscribed to outbox/+/+ (MQTT 3.1.1)" in caplog.text
