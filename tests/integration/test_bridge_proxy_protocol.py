"""Behind a TCP balancer (HAProxy, as compose/cloud.yml runs it) the bridge sees each client's own address.

Before: every connection through the balancer came from the balancer's address, so the per-address limit of
connections not yet authenticated (`pending_connections_per_address`) was one limit for everyone: a stranger
holding that many idle sockets through the balancer shut every device out of the node, and every log line and
connect telemetry row named the balancer. Now the nodes read HAProxy's PROXY header (`send-proxy-v2`, or
version 1's `send-proxy`) from the addresses in `proxy_protocol_from`, and from no one else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.typing import Subprotocol

from cloud_bridge.settings import HostPort
from intent_contract import mqtt_packets as p
from tests.support.bridge import CountingIntegration, Harness, counting, listener_port, make_settings, running_bridge
from tests.support.haproxy import running_haproxy, tcp_balancer
from tests.support.mqtt_raw import connect_packet
from tests.support.net import free_port, wait_until

__all__ = ["counting"]  # fixture

LIMITS = {"pending_connections_per_address": 2, "pending_connections": 8, "enroll_per_address_per_minute": 1}
BALANCER = "127.0.0.9"  # where HAProxy connects to the node from (the test's own requests come from 127.0.0.1)
PROXY_OPTION = {"mqtt": "send-proxy-v2", "ws": "send-proxy", "https": "send-proxy-v2"}  # both versions are read
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def bridge(
    tmp_path: Path, server_cert_files: dict[str, Path], counting: CountingIntegration
) -> AsyncIterator[Harness]:
    settings = make_settings(tmp_path, server_cert_files, bridge={**LIMITS, "proxy_protocol_from": [BALANCER]})
    settings = replace(settings, ws_listen=HostPort("127.0.0.1", free_port()))
    async for harness in running_bridge(settings, server_cert_files["ca"], {"email.send": counting}):
        yield harness


@pytest.fixture
def balancer(bridge: Harness, tmp_path: Path) -> dict[str, int]:
    """The balancer's port for each listener of the bridge: HAProxy in TCP mode on 127.0.0.1, sending PROXY."""
    fronts = {listener: free_port() for listener in PROXY_OPTION}
    config = tcp_balancer(
        {fronts[n]: (listener_port(bridge, n), option) for n, option in PROXY_OPTION.items()}, BALANCER
    )
    with running_haproxy(config, tmp_path, list(fronts.values())):
        yield fronts


def _open(port: int, source: str) -> socket.socket:
    """A plain TCP connection from the loopback address `source` that sends nothing."""
    sock = socket.socket()
    sock.settimeout(15)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _closed(sock: socket.socket) -> bool:
    with sock:
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True


def _tls(sock: socket.socket, ca_file: Path) -> ssl.SSLSocket:
    return ssl.create_default_context(cafile=str(ca_file)).wrap_socket(sock, server_hostname="127.0.0.1")


def _pending(bridge: Harness, listener: str) -> float:
    sample = bridge.bridge.metrics.registry.get_sample_value("bridge_connections_pending", {"listener": listener})
    return sample or 0.0


def _shed(bridge: Harness, listener: str) -> float:
    labels = {"listener": listener, "limit": "address"}
    return bridge.bridge.metrics.registry.get_sample_value("bridge_connections_shed_total", labels) or 0.0


@pytest.mark.parametrize("listener", ["mqtt", "ws", "https"])
async def test_through_the_balancer_a_stranger_fills_only_its_own_address_limit(
    bridge: Harness, balancer: dict[str, int], listener: str
) -> None:
    front = balancer[listener]

    def scenario() -> tuple[bool, bool]:
        # The connections that found the balancer listening (wait_for_port) have left the node.
        wait_until(lambda: _pending(bridge, listener) == 0, what="no connection pending at the node")
        with contextlib.ExitStack() as held:
            for _ in range(2):  # the stranger's limit, idle
                held.enter_context(_open(front, "127.0.0.2"))
            wait_until(lambda: _pending(bridge, listener) == 2, what="the balancer's two connections at the node")
            over = _closed(_open(front, "127.0.0.2"))  # a third from the stranger: closed at once
            try:  # a device from another address: taken, TLS and all (before: closed, the balancer's limit)
                held.enter_context(_tls(_open(front, "127.0.0.3"), bridge.ca_file))
            except (ssl.SSLError, ConnectionError):
                return over, False
            return over, True

    over, taken = await asyncio.to_thread(scenario)
    assert (over, taken) == (True, True)
    assert _shed(bridge, listener) == 1.0


def _mqtt_connect(front: int, device_id: str, token: str, ca_file: Path) -> bytes:
    with _tls(_open(front, "127.0.0.3"), ca_file) as sock:
        sock.sendall(connect_packet(device_id, device_id, token))
        return sock.recv(4)


async def _ws_connect(front: int, device_id: str, token: str, context: ssl.SSLContext) -> bytes:
    """In this event loop: websockets' sync client reads the TLS socket in a thread while another writes on it, a
    race in Python's ssl that lost a request now and then (tests/integration/test_bridge_front_door.py)."""
    sock = _open(front, "127.0.0.4")
    url = f"wss://127.0.0.1:{front}/mqtt"
    async with (
        ws_connect(url, sock=sock, ssl=context, subprotocols=[Subprotocol("mqtt")], open_timeout=15) as ws,
        asyncio.timeout(15),
    ):
        await ws.send(connect_packet(device_id, device_id, token))
        return await ws.recv(decode=False)


async def test_the_address_a_device_connects_from_is_its_own_in_the_log_over_tls_and_websocket(
    bridge: Harness, balancer: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    creds = await bridge.enroll()
    caplog.set_level(logging.INFO)
    accepted = p.encode(p.Connack(False, p.ConnackCode.ACCEPTED))
    refused = p.encode(p.Connack(False, p.ConnackCode.NOT_AUTHORIZED))
    mqtt, ws, token = balancer["mqtt"], balancer["ws"], creds.token()
    answers = [
        await asyncio.to_thread(_mqtt_connect, mqtt, creds.device_id, creds.token(), bridge.ca_file),
        await asyncio.to_thread(_mqtt_connect, mqtt, creds.device_id, creds.token(audience="other"), bridge.ca_file),
        await _ws_connect(ws, creds.device_id, token, bridge.client_ssl()),
        await _ws_connect(ws, creds.device_id, token, bridge.client_ssl()),  # replayed
    ]
    assert answers == [accepted, refused, accepted, refused]
    peers = {r.code: r.peer for r in caplog.records if r.name == "cloud_bridge.device_gate"}  # type: ignore[attr-defined]
    assert peers == {"token_audience": "127.0.0.3", "token_replayed": "127.0.0.4"}


async def test_the_enrollment_rate_limit_is_each_clients_own_through_the_balancer(
    bridge: Harness, balancer: dict[str, int]
) -> None:
    """One enrollment request a minute from an address (here): a second from the same client is refused 429, one
    from another client through the same balancer is not (before, they shared the balancer's bucket)."""
    url = f"https://127.0.0.1:{balancer['https']}/v1/enroll"

    async def status(source: str) -> int:
        connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
        async with (
            aiohttp.ClientSession(connector=connector) as http,
            http.post(url, json={"code": "not-a-code", "public_key": "x"}, ssl=bridge.client_ssl()) as response,
        ):
            return response.status

    assert [await status("127.0.0.5"), await status("127.0.0.5"), await status("127.0.0.6")] == [400, 429, 400]


def _handshake_after(sock: socket.socket, header: bytes, ca_file: Path) -> bool:
    """Whether a TLS handshake whose first bytes go in one send with `header` completes."""
    context = ssl.create_default_context(cafile=str(ca_file))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    sock.sendall(header + outgoing.read())
    while True:
        try:
            tls.do_handshake()
            return True
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            data = sock.recv(65536)
            if not data:
                return False
            incoming.write(data)


async def test_a_proxy_header_is_read_from_the_balancer_only(bridge: Harness, caplog: pytest.LogCaptureFixture) -> None:
    port = bridge.mqtt_port

    def scenario() -> tuple[bool, bool, bool]:
        with _open(port, "127.0.0.2"), _open(port, "127.0.0.2"):
            wait_until(lambda: _pending(bridge, "mqtt") == 2, what="two connections pending")
            spoofed = _open(port, "127.0.0.2")  # a stranger naming another address is still counted as itself
            spoofed.sendall(b"PROXY TCP4 6.6.6.6 127.0.0.1 4242 8883\r\n")
            over = _closed(spoofed)
        wait_until(lambda: _pending(bridge, "mqtt") == 0, what="their places given back")
        # The balancer's address without a header (a balancer not set to send one): closed, and said why.
        bare = _open(port, BALANCER)
        bare.sendall(b"\x16\x03\x01\x00\x05hello")
        no_header = _closed(bare)
        # A header naming the client, with the TLS handshake after it in the same segment: served.
        with _open(port, BALANCER) as sock:
            handshake = _handshake_after(sock, b"PROXY TCP4 192.0.2.7 127.0.0.1 4242 8883\r\n", bridge.ca_file)
        return over, no_header, handshake

    with caplog.at_level(logging.WARNING):
        over, no_header, handshake = await asyncio.to_thread(scenario)
    assert (over, no_header, handshake) == (True, True, True)
    assert _shed(bridge, "mqtt") == 1.0
    assert [r.peer for r in caplog.records if getattr(r, "code", None) == "bad_proxy_header"] == [BALANCER]  # type: ignore[attr-defined]
