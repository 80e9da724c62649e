"""Strangers' connections are bounded on every TLS port of the bridge (intent_contract.accept, http_server).

Before: asyncio's TLS took a 256 KiB buffer for every accepted connection, and the bridge took every
connection, so idle sockets (no credential, no byte sent) grew it without bound, and a request head or
body sent a byte at a time held its socket for ever on the HTTPS port.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloud_bridge import http_server
from cloud_bridge.node import Bridge
from cloud_bridge.settings import HostPort
from intent_contract import mqtt_packets as p
from tests.support.bridge import CountingIntegration, Harness, counting, listener_port, make_settings, running_bridge
from tests.support.mqtt_raw import connect_packet, read_until_closed, tls_connect
from tests.support.net import free_port, wait_until
from tests.support.stack import BridgeProcess

__all__ = ["counting"]  # fixture

LIMITS = {"pending_connections_per_address": 2, "pending_connections": 3}
DEADLINE_S = 1.0  # the HTTPS head and request deadlines, shortened here


@pytest.fixture
async def bridge(
    tmp_path: Path, server_cert_files: dict[str, Path], counting: CountingIntegration, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Harness]:
    monkeypatch.setattr(http_server, "REQUEST_HEAD_TIMEOUT_S", DEADLINE_S)
    monkeypatch.setattr(http_server, "REQUEST_TIMEOUT_S", DEADLINE_S)
    settings = make_settings(tmp_path, server_cert_files, bridge=LIMITS)
    settings = replace(settings, ws_listen=HostPort("127.0.0.1", free_port()))
    async for harness in running_bridge(settings, server_cert_files["ca"], {"email.send": counting}):
        yield harness


def _open(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A plain TCP connection from the loopback address `source` that sends nothing."""
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _closed_at_once(sock: socket.socket) -> bool:
    """The bridge closed a connection that sent nothing (a socket it took would wait for the ClientHello: the read
    times out, a failure)."""
    with sock:
        try:
            return sock.recv(1) == b""
        except ConnectionResetError:
            return True


def _handshake(sock: socket.socket, ca_file: Path) -> ssl.SSLSocket:
    """TLS on `sock`, verified: only a connection the bridge took gets through."""
    return ssl.create_default_context(cafile=str(ca_file)).wrap_socket(sock, server_hostname="127.0.0.1")


def _taken(port: int, ca_file: Path) -> ssl.SSLSocket | None:
    try:
        return _handshake(_open(port), ca_file)
    except (ssl.SSLError, ConnectionError):
        return None


def _take(port: int, ca_file: Path) -> ssl.SSLSocket:
    """A connection the bridge takes, once it takes one (a place is given back as a connection ends)."""
    taken = wait_until(partial(_taken, port, ca_file), what=f"port {port} takes a connection")
    assert taken is not None
    return taken


def _shed(bridge: Harness, listener: str, limit: str) -> float:
    labels = {"listener": listener, "limit": limit}
    return bridge.bridge.metrics.registry.get_sample_value("bridge_connections_shed_total", labels) or 0.0


@pytest.mark.parametrize("listener", ["mqtt", "ws", "https"])
async def test_connections_past_a_listeners_limits_are_closed_at_once(bridge: Harness, listener: str) -> None:
    port = listener_port(bridge, listener)

    def scenario() -> tuple[bool, bool, int]:
        held = [_open(port), _open(port)]
        over_address = _closed_at_once(_open(port))  # a third from 127.0.0.1
        held.append(_open(port, "127.0.0.2"))
        over_total = _closed_at_once(_open(port, "127.0.0.3"))  # a fourth in all
        taken = [_handshake(sock, bridge.ca_file) for sock in held]
        for tls in taken:
            tls.close()
        return over_address, over_total, len(taken)

    over_address, over_total, taken = await asyncio.to_thread(scenario)
    assert (over_address, over_total) == (True, True)
    assert taken == 3  # the three within the limits were taken, TLS and all
    assert (_shed(bridge, listener, "address"), _shed(bridge, listener, "total")) == (1.0, 1.0)
    # Their places are given back as they end: one more is taken.
    (await asyncio.to_thread(_take, port, bridge.ca_file)).close()


async def test_an_authenticated_device_no_longer_counts_and_a_failed_handshake_gives_its_place_back(
    bridge: Harness,
) -> None:
    first, second = await bridge.enroll(name="boiler-1"), await bridge.enroll(name="boiler-2")

    def pending() -> float:
        sample = bridge.bridge.metrics.registry.get_sample_value("bridge_connections_pending", {"listener": "mqtt"})
        return sample if sample is not None else -1.0

    def scenario() -> tuple[list[bytes], int, bool, list[bytes]]:
        devices = [tls_connect(bridge.mqtt_port, str(bridge.ca_file)) for _ in range(2)]
        connacks = []
        for device, creds in zip(devices, (first, second), strict=True):
            device.sendall(connect_packet(creds.device_id, creds.device_id, creds.token()))
            connacks.append(device.recv(4))
        # Two devices connected from 127.0.0.1, the limit of one address: two strangers are still taken.
        strangers = [_handshake(_open(bridge.mqtt_port), bridge.ca_file) for _ in range(2)]
        over = _closed_at_once(_open(bridge.mqtt_port))
        for tls in [*strangers, *devices]:
            tls.close()
        wait_until(lambda: pending() == 0, what="no connection pending")
        failed = [_open(bridge.mqtt_port) for _ in range(2)]
        for sock in failed:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")  # no TLS: the handshake fails and the bridge closes them
        closes = [sock.recv(1) for sock in failed]
        for sock in failed:
            sock.close()
        wait_until(lambda: pending() == 0, what="the failed handshakes' places given back")
        return connacks, len(strangers), over, closes

    connacks, strangers, over, closes = await asyncio.to_thread(scenario)
    assert connacks == [p.encode(p.Connack(False, p.ConnackCode.ACCEPTED))] * 2
    assert (strangers, over, closes) == (2, True, [b"", b""])


async def test_https_a_request_head_or_body_sent_slowly_is_cut_off_and_a_kept_alive_connection_is_served(
    bridge: Harness,
) -> None:
    port = bridge.settings.http_listen.port

    def scenario() -> tuple[bytes, bytes, list[bytes]]:
        with tls_connect(port, str(bridge.ca_file)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            head = read_until_closed(sock)  # closed at the head deadline; the read times out (15 s) if never
        with tls_connect(port, str(bridge.ca_file)) as sock:
            sock.sendall(
                b"POST /v1/enroll HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            body = read_until_closed(sock)
        answers = []
        with tls_connect(port, str(bridge.ca_file)) as sock:
            for _ in range(2):
                sock.sendall(b"GET /v1/device HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answers.append(sock.recv(65536).split(b"\r\n", 1)[0])
        return head, body, answers

    head, body, answers = await asyncio.to_thread(scenario)
    assert (head, body) == (b"", b"")
    assert answers == [b"HTTP/1.1 401 Unauthorized"] * 2


async def test_the_metrics_listener_bounds_connections_and_cuts_off_a_slow_head(bridge: Harness) -> None:
    """The plain metrics listener took every connection and held a head sent slowly (aiohttp has no deadline on
    it): 800 idle connections from one scraper-network address held 800 descriptors of the node."""
    assert bridge.settings.metrics_listen is not None
    port = bridge.settings.metrics_listen.port
    limits = http_server.METRICS_CONNECTIONS

    def scenario() -> tuple[bool, bool, bytes, bytes]:
        sources = [f"127.0.0.{n}" for n in range(2, 2 + limits.total // limits.per_address)]
        held = [_open(port, sources[0]) for _ in range(limits.per_address)]
        over_address = _closed_at_once(_open(port, sources[0]))
        held += [_open(port, source) for source in sources[1:] for _ in range(limits.per_address)]
        over_total = _closed_at_once(_open(port, "127.0.0.99"))
        for sock in held:
            sock.close()
        slow = wait_until(partial(_taken_plain, port), what="the metrics port takes a connection again")
        with slow:
            slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            head = read_until_closed(slow)  # closed at the head deadline; the read times out (15 s) if never
        with _open(port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = sock.recv(65536).split(b"\r\n", 1)[0]
        return over_address, over_total, head, answer

    over_address, over_total, head, answer = await asyncio.to_thread(scenario)
    assert (over_address, over_total, head, answer) == (True, True, b"", b"HTTP/1.1 200 OK")
    assert (_shed(bridge, "metrics", "address"), _shed(bridge, "metrics", "total")) == (1.0, 1.0)


def _taken_plain(port: int) -> socket.socket | None:
    """A plain connection the metrics listener keeps (one it closes at once is None)."""
    sock = _open(port)
    sock.settimeout(0.2)
    try:
        if sock.recv(1) == b"":
            sock.close()
            return None
    except TimeoutError:  # kept: nothing to read yet
        sock.settimeout(10)
        return sock
    except ConnectionResetError:
        sock.close()
        return None
    sock.close()
    return None


def _pending(bridge: BridgeProcess) -> dict[str, float]:
    """`bridge_connections_pending` by listener, from the bridge's metrics endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{bridge.metrics_port}/metrics", timeout=10).read().decode()
    return {
        sample.labels["listener"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "bridge_connections_pending"
        for sample in family.samples
        if sample.labels["listener"] != "metrics"  # this scrape's own connection
    }


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_two_thousand_idle_sockets_do_not_grow_the_bridge(tmp_path: Path, server_cert_files: dict[str, Path]) -> None:
    """1,000 idle sockets on the MQTT port and 1,000 on the HTTPS port grew the bridge by about 640 MB before: each
    took a TLS buffer of 256 KiB and was kept. Past the limits (16 from one address here) they are closed at once."""
    config = (
        "[bridge]\npending_connections_per_address = 16\npending_connections = 64\n\n"
        f'[integrations.smtp]\nhost = "127.0.0.1"\nport = {free_port()}\nsecurity = "none"\n'
    )
    bridge = BridgeProcess(tmp_path, server_cert_files, config_text=config).start()
    try:
        assert bridge.proc is not None
        pid = bridge.proc.pid
        ports = {"mqtt": bridge.mqtt_port, "https": bridge.http_port}
        # The start's own port probes have ended, so that the 16 held here are the only ones each listener counts.
        wait_until(lambda: _pending(bridge) == {"mqtt": 0, "https": 0}, what="no connection pending")
        before = _rss_mb(pid)
        held = [_open(port) for port in ports.values() for _ in range(16)]
        wait_until(lambda: _pending(bridge) == {"mqtt": 16, "https": 16}, what="16 held on each listener")
        # One at a time: a flood faster than the bridge accepts overflows the kernel's accept queue, whose
        # connections then wait in the kernel for seconds (SYN-ACK retransmits), not in the bridge.
        closed = sum(_closed_at_once(_open(port)) for port in ports.values() for _ in range(984))
        grown = _rss_mb(pid) - before
        for sock in held:
            sock.close()
        for port in ports.values():  # the places of the held ones are given back
            _take(port, server_cert_files["ca"]).close()
    finally:
        bridge.stop()
    assert closed == 2 * 984
    assert grown < 40, f"the bridge grew by {grown:.0f} MB"


@pytest.mark.timeout(45)  # the stop used to take aiohttp's 60 s of shutdown for the request below
async def test_a_request_under_way_does_not_hold_the_nodes_stop(
    tmp_path: Path, server_cert_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stranger's POST whose body never comes held `Bridge.stop` for 59 s (its request deadline, under aiohttp's
    60 s shutdown wait): longer than the 30 s systemd and compose give a stop before SIGKILL, so any stranger could
    make every stop of a node end killed, its store never closed."""
    monkeypatch.setattr(http_server, "REQUEST_TIMEOUT_S", 3600.0)  # only the stop can end the request here
    settings = make_settings(tmp_path, server_cert_files)
    node = Bridge(settings, integrations={})
    await node.start()
    try:

        def start_request() -> ssl.SSLSocket:
            sock = tls_connect(settings.http_listen.port, str(server_cert_files["ca"]))
            sock.sendall(
                b"POST /v1/enroll HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            return sock

        def pending() -> float | None:
            return node.metrics.registry.get_sample_value("bridge_connections_pending", {"listener": "https"})

        sock = await asyncio.to_thread(start_request)
        await asyncio.to_thread(wait_until, lambda: pending() == 1, what="the request under way")
    finally:
        await node.stop()
    with sock:
        assert await asyncio.to_thread(read_until_closed, sock) == b""
