"""The device front door: packet size bounded at the MQTT layer (an oversized packet closes the
connection before its body is read), over TLS and over WebSocket."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from cloud_bridge import mqtt_door
from cloud_bridge.front_door import MAX_CONNECT, MAX_PACKET
from cloud_bridge.mqtt_door import CONNECT_TIMEOUT_S, V5_UNSUPPORTED
from cloud_bridge.settings import HostPort
from intent_contract import mqtt_packets as p
from intent_contract.codec import decode_acks, encode_batch
from intent_contract.device_token import generate_private_key_pem
from tests.support import ws_raw
from tests.support.bridge import (
    CountingIntegration,
    Creds,
    Harness,
    counting,
    email,
    envelope,
    make_settings,
    running_bridge,
    until,
)
from tests.support.mqtt_raw import (
    RawClient,
    connect_packet,
    publish_header,
    read_until_closed,
    remaining_length,
    tls_connect,
)
from tests.support.net import free_port

__all__ = ["counting"]  # fixture

CONNACK_ACCEPTED = b"\x20\x02\x00\x00"


@pytest.fixture
async def bridge(
    tmp_path: Path, server_cert_files: dict[str, Path], counting: CountingIntegration
) -> AsyncIterator[Harness]:
    settings = replace(make_settings(tmp_path, server_cert_files), ws_listen=HostPort("127.0.0.1", free_port()))
    async for harness in running_bridge(settings, server_cert_files["ca"], {"email.send": counting}):
        yield harness


def declare_huge_publish(bridge: Harness, creds: Creds, declared: int) -> tuple[bytes, bytes]:
    """CONNACK, then what the bridge sends after a PUBLISH header declaring `declared` bytes and no body."""
    with tls_connect(bridge.mqtt_port, str(bridge.ca_file)) as sock:
        sock.sendall(connect_packet(creds.device_id, creds.device_id, creds.token()))
        connack = sock.recv(4)
        sock.sendall(publish_header(f"devices/{creds.device_id}/intents", declared) + b"\x00" * 100)
        return connack, read_until_closed(sock)


async def test_an_oversized_publish_is_refused_from_its_fixed_header(
    bridge: Harness, counting: CountingIntegration, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cloud_bridge.mqtt_door")
    creds = await bridge.enroll()
    # 32 MiB declared, 100 bytes sent: only a bridge that judges the header closes the connection.
    connack, after = await asyncio.to_thread(declare_huge_publish, bridge, creds, 32 << 20)
    assert connack == CONNACK_ACCEPTED
    assert after == b""  # no PUBACK, closed
    (line,) = [r.getMessage() for r in caplog.records if "MQTT packet refused" in r.getMessage()]
    assert line.startswith(f"MQTT packet refused from {creds.device_id} (127.0.0.1:")
    assert f"over the {MAX_PACKET:,}-byte limit" in line
    client = await bridge.connect(creds)  # the device may come back, and others were never held up
    try:
        client.send([email("after-1")])
        await until(lambda: "delivered" in client.states().get("after-1", []), what="delivered after the refusal")
    finally:
        await client.stop()
    assert [job.intent_id for job in counting.calls] == ["after-1"]


async def test_an_oversized_connect_is_refused_before_authentication(bridge: Harness) -> None:
    def attack() -> bytes:
        with tls_connect(bridge.mqtt_port, str(bridge.ca_file)) as sock:
            sock.sendall(bytes([0x10]) + remaining_length(100_000) + b"\x00\x04MQTT")
            return read_until_closed(sock)

    assert await asyncio.to_thread(attack) == b""  # no CONNACK: closed


async def test_a_32_mib_publish_gets_no_puback(bridge: Harness, counting: CountingIntegration) -> None:
    creds = await bridge.enroll()
    client = await bridge.connect(creds)
    try:
        info = client.mqtt.publish(f"devices/{creds.device_id}/intents", b"\x00" * (32 << 20), qos=1)
        await until(client.disconnected.is_set, timeout=60, what="the bridge closing the connection")
        assert not info.is_published()
    finally:
        await client.stop()
    assert counting.calls == []


async def test_over_websocket_the_limit_holds_across_messages(bridge: Harness) -> None:
    """websockets caps one message at 1 MiB; an MQTT packet spread over many messages is capped here."""
    creds = await bridge.enroll()
    assert bridge.settings.ws_listen is not None
    url = f"wss://127.0.0.1:{bridge.settings.ws_listen.port}/"

    async def attack() -> tuple[bytes, bool]:
        async with _ws_device(url, bridge) as ws, asyncio.timeout(30):
            await ws.send(connect_packet(creds.device_id, creds.device_id, creds.token()))
            connack = await ws.recv(decode=False)
            try:
                await ws.send(publish_header(f"devices/{creds.device_id}/intents", 32 << 20))
                # The start of the body, in a message of its own; the bridge may have closed already.
                await ws.send(b"\x00" * 1000)
                await ws.recv()
            except ConnectionClosed:
                return bytes(connack), True
            return bytes(connack), False  # an answer (a PUBACK would be one) instead of the close

    connack, closed = await attack()
    assert connack == CONNACK_ACCEPTED
    assert closed


def _answers(sock: ssl.SSLSocket, device_id: str, packet_id: int) -> bool:
    """Whether the connection still takes a QoS 1 publish (to the device's health topic) and PUBACKs it."""
    try:
        sock.settimeout(2)
        sock.sendall(p.encode(p.Publish(f"devices/{device_id}/health", b"\x80", 1, False, False, packet_id)))
        return sock.recv(64)[:1] == b"\x40"
    except (OSError, ssl.SSLError):
        return False


async def test_take_overs_at_once_leave_one_connection_and_revocation_ends_it(bridge: Harness) -> None:
    """A connection holds the device; three CONNECTs of it arrive at once. Each waited for the older
    connection's end and then took the client id, the last overwriting the others: the ones overwritten ran
    on untracked, not dropped at revocation nor at stop (within a few rounds, on the tree before)."""
    creds = await bridge.enroll()
    port, ca = bridge.mqtt_port, str(bridge.ca_file)

    def connect() -> tuple[ssl.SSLSocket, bytes]:
        sock = tls_connect(port, ca)
        sock.sendall(connect_packet(creds.device_id, creds.device_id, creds.token(), keepalive=0))
        return sock, sock.recv(4)

    sockets: list[ssl.SSLSocket] = []
    try:
        for _ in range(8):
            first, answer = await asyncio.to_thread(connect)
            sockets.append(first)
            assert answer == CONNACK_ACCEPTED
            at_once = await asyncio.gather(*(asyncio.to_thread(connect) for _ in range(3)))
            sockets.extend(sock for sock, _ in at_once)
            accepted = [sock for sock, answer in at_once if answer == CONNACK_ACCEPTED]
            answering = await asyncio.gather(*(asyncio.to_thread(_answers, s, creds.device_id, 7) for s in accepted))
            live = [sock for sock, answers in zip(accepted, answering, strict=True) if answers]
            assert len(live) == 1, f"{len(live)} connections of one device answer"
        await asyncio.to_thread(bridge.bridge.registry.revoke, creds.device_id, time.time())
        await until(
            lambda: asyncio.to_thread(lambda: not _answers(live[0], creds.device_id, 9)),
            what="the revoked device's connection ends",
        )
    finally:
        for sock in sockets:
            sock.close()


def _ws_device(url: str, bridge: Harness) -> ws_connect:
    """A WebSocket client in this event loop. Not websockets' sync client: its thread reading the TLS socket while
    another writes on it is a race in Python's ssl (a TLS 1.3 session ticket read while the upgrade request was
    written lost the request now and then, and the bridge's upgrade deadline closed the silent connection)."""
    return ws_connect(
        url, ssl=bridge.client_ssl(), subprotocols=[Subprotocol("mqtt")], open_timeout=15, ping_interval=None
    )


async def _ws_answer(bridge: Harness, packet: bytes) -> bytes:
    """What the bridge answers over WebSocket to `packet` sent as the first message (b"" if it only closes)."""
    assert bridge.settings.ws_listen is not None
    url = f"wss://127.0.0.1:{bridge.settings.ws_listen.port}/"
    async with _ws_device(url, bridge) as ws, asyncio.timeout(15):
        await ws.send(packet)
        try:
            return await ws.recv(decode=False)
        except ConnectionClosed:
            return b""


async def test_over_websocket_a_refused_connect_gets_its_connack_and_logs_no_error(
    bridge: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """WebSocket writes were tasks nobody kept: the connection ended (its transport aborted) before the task
    wrote, so a refused CONNECT lost its CONNACK and the task's ClientConnectionResetError reached the loop's
    exception handler ("Task exception was never retrieved"), a log line per unauthenticated attempt."""
    caplog.set_level(logging.INFO)
    loop_errors: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
    creds = await bridge.enroll()
    forged = Creds(creds.device_id, generate_private_key_pem()).token()
    v5 = bytes([0x10, 16]) + b"\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03dev"
    cases = {
        "forged token": (connect_packet(creds.device_id, creds.device_id, forged), b"\x20\x02\x00\x05"),
        "MQTT 5": (v5, V5_UNSUPPORTED),
        "protocol level 3": (p.encode(p.Connect("MQTT", 3, "dev", True, 60, None, None, None)), b"\x20\x02\x00\x01"),
    }
    try:
        answers = {name: await _ws_answer(bridge, packet) for name, (packet, _) in cases.items()}
        gc.collect()  # a task dropped with its exception unread reports it when collected
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert answers == {name: connack for name, (_, connack) in cases.items()}
    assert [str(context.get("exception") or context["message"]) for context in loop_errors] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_over_websocket_an_upgrade_not_done_by_the_connect_deadline_is_closed(bridge: Harness) -> None:
    """aiohttp has no timeout on reading a request's headers, and the CONNECT timeout started after the upgrade: an
    upgrade request sent in part, and then nothing (or a byte now and then), held its socket for an hour (aiohttp's
    keep-alive timer), and a source could hold sockets until the bridge ran out of descriptors. A device that
    upgrades and connects in time is not touched by the deadline."""
    creds = await bridge.enroll()
    assert bridge.settings.ws_listen is not None
    port = bridge.settings.ws_listen.port
    url = f"wss://127.0.0.1:{port}/"

    def stall() -> bytes:
        # The deadline is the only wait: the read times out (a failure) well after it, if the bridge never closes.
        with tls_connect(port, str(bridge.ca_file), timeout=CONNECT_TIMEOUT_S + 20) as sock:
            sock.sendall(b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nX-Slow: ")
            return read_until_closed(sock)

    async with _ws_device(url, bridge) as device:
        await device.send(connect_packet(creds.device_id, creds.device_id, creds.token()))
        async with asyncio.timeout(15):
            connack = await device.recv(decode=False)
        stalled = await asyncio.to_thread(stall)
        # The device connected before that connection, so its own deadline has passed too: it still answers.
        await device.send(p.encode(p.Bare(p.Type.PINGREQ)))
        async with asyncio.timeout(15):
            answer = await device.recv(decode=False)
    assert connack == CONNACK_ACCEPTED
    assert stalled == b""  # closed, no answer
    assert answer == p.encode(p.Bare(p.Type.PINGRESP))


@pytest.mark.parametrize(
    ("what", "lines"),
    [
        ("33 header lines", [f"X-Pad-{i}: {'a' * 100}" for i in range(33)]),
        ("a 5,000-byte line", ["X-Pad: " + "a" * 5000]),
    ],
)
async def test_over_websocket_an_upgrade_head_past_its_limits_is_refused_at_once(
    bridge: Harness, what: str, lines: list[str]
) -> None:
    """aiohttp reads up to 128 header lines of 8,190 bytes: an upgrade head sent that far and not finished held
    about 2.4 MB of the bridge until the deadline (1.2 GB for the 512 connections a listener holds before
    authentication). An upgrade needs a dozen short lines: past 32, or a line past 4,096 bytes, it is answered and
    closed as soon as that much is in, before the head ends (it never does here)."""
    assert bridge.settings.ws_listen is not None
    port = bridge.settings.ws_listen.port
    head = "GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n" + "".join(f"{line}\r\n" for line in lines)

    def scenario() -> bytes:
        # Well within the deadline, so an answer can only be the limit's; before, the deadline closed it unanswered.
        with tls_connect(port, str(bridge.ca_file), timeout=CONNECT_TIMEOUT_S + 20) as sock:
            sock.sendall(head.encode())
            return read_until_closed(sock)

    answer = await asyncio.to_thread(scenario)
    assert answer.startswith(b"HTTP/1.0 400 Bad Request\r\n"), (what, answer[:100])  # before: b"", at the deadline


def _upgrade_answer(bridge: Harness, protocols: str) -> bytes:
    """The head of the answer to a WebSocket upgrade offering the subprotocols `protocols`."""
    assert bridge.settings.ws_listen is not None
    with tls_connect(bridge.settings.ws_listen.port, str(bridge.ca_file)) as sock:
        return ws_raw.upgrade(sock, protocols)


async def test_over_websocket_an_upgrade_without_the_mqtt_subprotocol_is_refused_a_line_at_a_time(
    bridge: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """MQTT 3.1.1 section 6: a client offers `mqtt`, the server selects it. An upgrade offering others only was
    taken without a subprotocol, and aiohttp logged a warning for each: a line in the log per TLS handshake of
    anyone. Now it is answered 400, and said once in 10 s; one offering `mqtt` among others gets `mqtt`."""
    caplog.set_level(logging.INFO)
    refused = [await asyncio.to_thread(_upgrade_answer, bridge, "foo, mqttv3.1") for _ in range(3)]
    taken = await asyncio.to_thread(_upgrade_answer, bridge, "foo, mqtt")
    assert [answer.split(b"\r\n", 1)[0] for answer in refused] == [b"HTTP/1.1 400 Bad Request"] * 3
    assert taken.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Protocol: mqtt" in taken
    lines = [r for r in caplog.records if r.name.startswith(("aiohttp", "cloud_bridge")) and r.levelno >= logging.INFO]
    assert [getattr(r, "code", None) for r in lines] == ["no_mqtt_subprotocol"], [r.getMessage() for r in lines]


@pytest.fixture
async def late_deadline(
    tmp_path: Path, server_cert_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Harness]:
    """A bridge whose CONNECT deadline is far off: what ends a connection before it is something else."""
    monkeypatch.setattr(mqtt_door, "CONNECT_TIMEOUT_S", 120.0)
    settings = replace(make_settings(tmp_path, server_cert_files), ws_listen=HostPort("127.0.0.1", free_port()))
    async for harness in running_bridge(settings, server_cert_files["ca"], {}):
        yield harness


async def test_over_websocket_what_comes_before_the_connect_is_bounded_as_on_tls(late_deadline: Harness) -> None:
    """On TLS the framer refuses a CONNECT declared over 8 KiB from its fixed header; over WebSocket aiohttp read
    a whole message of up to about 1 MiB first, so a stranger sending most of one and then nothing held about
    1.6 MB of the bridge until the deadline. Now a connection may send 64 KiB from its upgrade until its CONNECT
    is answered (a largest CONNECT sent a byte per frame still fits), and is closed past that."""
    bridge = late_deadline
    creds = await bridge.enroll()
    assert bridge.settings.ws_listen is not None
    port = bridge.settings.ws_listen.port
    will = p.Will(f"devices/{creds.device_id}/health", b"w" * 7700, 0, False)
    connect = p.encode(p.Connect("MQTT", 4, creds.device_id, True, 60, will, creds.device_id, creds.token().encode()))
    assert 7000 < len(connect) <= MAX_CONNECT

    def scenario() -> tuple[bytes, bytes]:
        with tls_connect(port, str(bridge.ca_file), timeout=30) as stranger:
            assert ws_raw.upgrade(stranger).startswith(b"HTTP/1.1 101")
            try:
                stranger.sendall(ws_raw.frame(ws_raw.BINARY, b"\x00" * (100 << 10), declared=1 << 20))
            except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
                cut = b""  # aborted past 64 KiB while the rest was still on its way
            else:
                cut = read_until_closed(stranger)  # the read times out (a failure) if the bridge waits for the rest
        with tls_connect(port, str(bridge.ca_file), timeout=30) as device:
            assert ws_raw.upgrade(device).startswith(b"HTTP/1.1 101")
            device.sendall(b"".join(ws_raw.frame(ws_raw.BINARY, bytes([byte])) for byte in connect))
            return cut, device.recv(6)

    cut, connack = await asyncio.to_thread(scenario)
    assert cut == b""  # aborted: no close frame, nothing
    assert connack == b"\x82\x04" + CONNACK_ACCEPTED


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_a_device_that_stops_reading_and_subscribes_in_a_loop_is_held_back_and_dropped(
    bridge: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each SUBSCRIBE to a device's acks sends every result it has not confirmed again. The door read on while
    the device read nothing: a device with 20,000 unconfirmed results and 3,000 SUBSCRIBEs (130 KB) grew the
    bridge by 1.5 GB. Now past 4 MB unsent it reads nothing more from that device, and drops it when that is
    not read within SLOW_READER_S (shortened here; the device has no keepalive to end it)."""
    monkeypatch.setattr(mqtt_door, "SLOW_READER_S", 3.0)
    creds = await bridge.enroll()
    acks_topic = f"devices/{creds.device_id}/acks"
    count = 5000  # sms.send is not among the tenant's kinds: every one is rejected, a final result to confirm

    def fill() -> RawClient:
        device = RawClient(bridge.mqtt_port, 30, ca_file=str(bridge.ca_file))
        device.connect(creds.device_id, keepalive=0, username=creds.device_id, password=creds.token().encode())
        assert device.subscribe(acks_topic, 1) == (1,)
        for start in range(0, count, 1000):
            batch = [envelope(f"x{start + i}", "sms.send", {"to": "+15555550100", "text": "hi"}) for i in range(1000)]
            topic = f"devices/{creds.device_id}/intents"
            device.send(p.Publish(topic, encode_batch(batch), 1, False, False, start + 1))
        results = 0
        while results < count:
            packet = device.receive(30)
            if isinstance(packet, p.Publish):
                results += len(decode_acks(packet.payload))
                assert packet.packet_id is not None
                device.send(p.encode_ack(p.Type.PUBACK, packet.packet_id))
        return device

    device = await asyncio.to_thread(fill)
    try:
        before = _rss_mb()
        device.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        resubscribe = b"".join(p.encode(p.Subscribe(100 + i, ((acks_topic, 1),))) for i in range(3000))
        await asyncio.to_thread(device.sock.sendall, resubscribe)
        listener = bridge.bridge.listener
        assert listener is not None
        peak, deadline = before, time.monotonic() + 30
        while listener.holds(creds.device_id) and time.monotonic() < deadline:
            peak = max(peak, _rss_mb())
            await asyncio.sleep(0.1)
        dropped = not listener.holds(creds.device_id)
    finally:
        device.close()
    assert dropped, "the device that reads nothing was not dropped within 30 s"
    assert peak - before < 100, f"the bridge grew by {peak - before:.0f} MB"


async def test_what_a_device_repeats_at_will_is_logged_a_line_at_a_time_and_a_long_subscribe_ends_it(
    bridge: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Every refused topic and every undecodable health report was a line of its own: 600,000 refused filters
    (2.4 MB sent) wrote 79 MB of log, 50,000 bad reports 7.4 MB. And one SUBSCRIBE of 200,000 filters held up
    every other device for 3.5 s, where a device subscribes to one."""
    creds = await bridge.enroll()
    caplog.set_level(logging.INFO)

    def scenario() -> tuple[tuple[int, ...], bool]:
        device = RawClient(bridge.mqtt_port, 30, ca_file=str(bridge.ca_file))
        try:
            device.connect(creds.device_id, username=creds.device_id, password=creds.token().encode())
            refused = device.subscribe("devices/someone-else/acks", 1)
            foreign = p.Publish("devices/someone-else/intents", b"x", 0, False, False, None)
            report = p.Publish(f"devices/{creds.device_id}/health", b"\xc1", 0, False, False, None)
            device.send(b"".join([p.encode(foreign)] * 5000 + [p.encode(report)] * 5000))
            device.send(p.Bare(p.Type.PINGREQ))
            assert device.receive() == p.Bare(p.Type.PINGRESP)  # everything before it was read
            device.send(p.Subscribe(device.packet_id(), tuple((f"a/{i}", 0) for i in range(9))))
            return refused, device.closed_by_server(timeout=5)
        finally:
            device.close()

    refused, closed = await asyncio.to_thread(scenario)
    assert refused == (p.SUBACK_FAILURE,)
    assert closed
    lines = [r.getMessage() for r in caplog.records]
    assert sum(line.startswith("topic refused") for line in lines) == 1  # 5,001 refusals, in 10 s
    assert sum(line.startswith("undecodable health dropped") for line in lines) == 1  # 5,000 reports
    registry = bridge.bridge.metrics.registry
    assert registry.get_sample_value("bridge_device_reports_total", {"outcome": "undecodable"}) == 5000
    refused = {
        a: registry.get_sample_value("bridge_topics_refused_total", {"action": a}) for a in ("publish", "subscribe")
    }
    assert refused == {"publish": 5000, "subscribe": 1}  # every one counted


async def test_garbage_from_a_device_or_a_stranger_is_logged_a_line_at_a_time(
    bridge: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """An enrolled device's undecodable batches and confirms, and a stranger's malformed CONNECTs (anyone who can
    finish a TLS handshake), were a WARNING line each: 300 connections with a bad CONNECT wrote 300 lines."""
    creds = await bridge.enroll()
    caplog.set_level(logging.INFO)
    registry = bridge.bridge.metrics.registry

    def strangers() -> None:
        for _ in range(40):
            with tls_connect(bridge.mqtt_port, str(bridge.ca_file)) as sock:
                sock.sendall(b"\x10\x03\x00\x01\xff")  # a CONNECT whose protocol name is not UTF-8
                read_until_closed(sock)

    def device() -> None:
        client = RawClient(bridge.mqtt_port, 30, ca_file=str(bridge.ca_file))
        try:
            client.connect(creds.device_id, username=creds.device_id, password=creds.token().encode())
            for leaf in ("confirms", "intents"):  # one queue per device, in order: the batches counted come last
                garbage = p.Publish(f"devices/{creds.device_id}/{leaf}", b"\xc1", 0, False, False, None)
                for _ in range(20):  # one at a time: the device's queue holds a few
                    client.send(p.encode(garbage))
                    client.send(p.Bare(p.Type.PINGREQ))
                    assert client.receive() == p.Bare(p.Type.PINGRESP)
        finally:
            client.close()

    await asyncio.to_thread(strangers)
    await asyncio.to_thread(device)
    await until(lambda: registry.get_sample_value("bridge_batches_total", {"outcome": "undecodable"}) == 20)
    lines = [r.getMessage() for r in caplog.records]
    assert sum(line.startswith("MQTT packet refused") for line in lines) == 1, lines
    assert sum(line.startswith("undecodable batch dropped") for line in lines) == 1, lines
    assert sum(line.startswith("undecodable confirms dropped") for line in lines) == 1, lines
