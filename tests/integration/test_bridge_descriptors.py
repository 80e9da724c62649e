"""A bridge out of file descriptors (its RLIMIT_NOFILE, set low for the child process): it says so in a line,
not a flood, and serves again once connections end, without a restart."""

from __future__ import annotations

import socket
import ssl
import urllib.request
from pathlib import Path

from tests.support.net import free_port, open_files_limit, open_to, wait_until
from tests.support.stack import BridgeProcess

LIMIT = 200  # descriptors the bridge may hold: the connections below take every one left


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _handshake(port: int, ca_file: Path) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            context = ssl.create_default_context(cafile=str(ca_file))
            with context.wrap_socket(sock, server_hostname="127.0.0.1"):
                return True
    except (OSError, ssl.SSLError):
        return False


def test_a_bridge_out_of_descriptors_logs_a_line_not_a_flood_and_serves_again(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    """asyncio reported each accept() that failed with EMFILE with a traceback, up to 100 times per wake-up of the
    listener: about 2,000 lines a second for as long as the descriptors were taken."""
    bridge = BridgeProcess(tmp_path, server_cert_files, free_port(), nofile=(LIMIT, LIMIT)).start()
    held: list[socket.socket] = []
    try:
        assert bridge.proc is not None
        # Not yet authenticated, from three addresses: within the per-address limit (128), past the descriptors.
        for n in range(300):
            sock = open_to(bridge.mqtt_port, f"127.0.0.{2 + n // 100}")
            if sock is None:  # the kernel's accept queue is full too: the bridge takes no more
                break
            held.append(sock)
        wait_until(lambda: "Too many open files" in bridge.log_path.read_text(), what="every descriptor taken")
        for sock in held:
            sock.close()
        held.clear()
        wait_until(lambda: _healthy(bridge.metrics_port), timeout=30, what="healthy again, without a restart")
        wait_until(lambda: _handshake(bridge.mqtt_port, server_cert_files["ca"]), timeout=30, what="a TLS handshake")
        assert bridge.proc.poll() is None
    finally:
        for sock in held:
            sock.close()
        bridge.stop()
    log = bridge.log_path.read_text()
    lines = [line for line in log.splitlines() if "Too many open files" in line]
    assert 1 <= len(lines) <= 3, f"{len(lines)} lines:\n" + "\n".join(lines[:5])
    pollers = [line for line in log.splitlines() if "unable to open database file" in line]
    # Pollers that found their files could not be opened meanwhile: a line each (registry, signals, fleet, keys).
    assert len(pollers) <= 4, "\n".join(pollers)
    assert "Traceback" not in log, log[-3000:]
    assert f"127.0.0.1:{bridge.mqtt_port} cannot accept connections: Too many open files" in lines[0]


def test_the_bridge_raises_its_soft_descriptor_limit_to_the_hard_one(
    tmp_path: Path, server_cert_files: dict[str, Path]
) -> None:
    """A container engine's soft limit of 1,024 (hard 524,288) was the bridge's: past about 1,000 devices it
    accepted no more connections. Here a soft 200 under a hard 4,000: 300 connections are all taken."""
    bridge = BridgeProcess(tmp_path, server_cert_files, free_port(), nofile=(LIMIT, 4000)).start()
    held: list[socket.socket] = []
    try:
        assert bridge.proc is not None
        assert open_files_limit(bridge.proc.pid) == (4000, 4000)
        for n in range(300):
            sock = open_to(bridge.mqtt_port, f"127.0.0.{2 + n // 100}")
            assert sock is not None, f"connection {n} not taken"
            held.append(sock)
        assert _handshake(bridge.mqtt_port, server_cert_files["ca"])
    finally:
        for sock in held:
            sock.close()
        bridge.stop()
    log = bridge.log_path.read_text()
    assert "Too many open files" not in log, log[-3000:]
    assert "file descriptors: up to 4000" in log
