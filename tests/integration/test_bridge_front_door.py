"""The device front door: packet size bounded at the MQTT layer (an oversized packet closes the
connection before its body is read), over TLS and over WebSocket."""

from __future__ import annotations

import asyncio
import gc
import logging
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

from cloud_bridge.front_door import MAX_PACKET
from cloud_bridge.mqtt_door import CONNECT_TIMEOUT_S, V5_UNSUPPORTED
from cloud_bridge.settings import HostPort
from intent_contract import mqtt_packets as p
from intent_contract.device_token import generate_private_key_pem
from tests.support.bridge import (
    CountingIntegration,
    Creds,
    Harness,
    counting,
    email,
    make_settings,
    running_bridge,
    until,
)
from tests.support.mqtt_raw import connect_packet, publish_header, read_until_closed, remaining_length, tls_connect
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

    def attack() -> tuple[bytes, bool]:
        with ws_connect(url, ssl=bridge.client_ssl(), subprotocols=[Subprotocol("mqtt")], open_timeout=15) as ws:
            ws.send(connect_packet(creds.device_id, creds.device_id, creds.token()))
            connack = ws.recv(timeout=15)
            try:
                ws.send(publish_header(f"devices/{creds.device_id}/intents", 32 << 20))
                # The start of the body, in a message of its own; the bridge may have closed already.
                ws.send(b"\x00" * 1000)
                ws.recv(timeout=15)
            except ConnectionClosed:
                return bytes(connack), True
            return bytes(connack), False  # an answer (a PUBACK would be one) instead of the close

    connack, closed = await asyncio.to_thread(attack)
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


def _ws_answer(bridge: Harness, packet: bytes) -> bytes:
    """What the bridge answers over WebSocket to `packet` sent as the first message (b"" if it only closes)."""
    assert bridge.settings.ws_listen is not None
    url = f"wss://127.0.0.1:{bridge.settings.ws_listen.port}/"
    with ws_connect(url, ssl=bridge.client_ssl(), subprotocols=[Subprotocol("mqtt")], open_timeout=15) as ws:
        ws.send(packet)
        try:
            return bytes(ws.recv(timeout=15))
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
        answers = {name: await asyncio.to_thread(_ws_answer, bridge, packet) for name, (packet, _) in cases.items()}
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

    def scenario() -> tuple[bytes, bytes, bytes]:
        with ws_connect(url, ssl=bridge.client_ssl(), subprotocols=[Subprotocol("mqtt")], open_timeout=15) as device:
            device.send(connect_packet(creds.device_id, creds.device_id, creds.token()))
            connack = device.recv(15)
            # The deadline is the only wait: the read times out (a failure) well after it, if the bridge never closes.
            with tls_connect(port, str(bridge.ca_file), timeout=CONNECT_TIMEOUT_S + 20) as sock:
                sock.sendall(b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nX-Slow: ")
                stalled = read_until_closed(sock)
            # The device connected before that connection, so its own deadline has passed too: it still answers.
            device.send(p.encode(p.Bare(p.Type.PINGREQ)))
            return connack, stalled, device.recv(15)

    connack, stalled, answer = await asyncio.to_thread(scenario)
    assert connack == CONNACK_ACCEPTED
    assert stalled == b""  # closed, no answer
    assert answer == p.encode(p.Bare(p.Type.PINGRESP))
