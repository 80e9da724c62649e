"""Both programs tell systemd (Type=notify) when they serve and when they stop: `systemctl start` returned, units
ordered after them started and a reload of the bridge failed, before either listened (Type=exec)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.stack import BridgeProcess


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """systemd's side: a datagram socket in the abstract namespace; yields it and its NOTIFY_SOCKET value."""
    name = f"@edge-outbox-test-{os.getpid()}-{tmp_path.name}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name[1:])
        sock.settimeout(60)
        yield sock, name


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(120)
def test_the_bridge_says_ready_once_it_listens_and_stopping_when_told_to_stop(
    tmp_path: Path, server_cert_files: dict[str, Path], notify_socket: tuple[socket.socket, str]
) -> None:
    sock, name = notify_socket
    notified = {**os.environ, "NOTIFY_SOCKET": name}
    bridge = BridgeProcess(tmp_path, server_cert_files, free_port(), env=notified)
    try:
        bridge.start()
        assert sock.recv(4096) == b"READY=1"
        assert all(_accepts(port) for port in (bridge.mqtt_port, bridge.http_port, bridge.metrics_port))
        assert (bridge.data_dir / "control.sock").exists()  # `systemctl reload` works from READY on
        assert bridge.stop() == 0
        assert sock.recv(4096) == b"STOPPING=1"
    finally:
        bridge.stop()


@pytest.mark.timeout(120)
def test_the_outbox_says_ready_once_it_listens_and_stopping_when_told_to_stop(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, name = notify_socket
    port = free_port()
    args = [sys.executable, "-m", "edge_outbox", "run", "--data-dir", str(tmp_path / "edge"),
            "--listen", f"127.0.0.1:{port}"]  # fmt: skip
    with (tmp_path / "outbox.log").open("wb") as log:
        outbox = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NOTIFY_SOCKET": name})
    try:
        assert sock.recv(4096) == b"READY=1"
        assert _accepts(port)
        outbox.send_signal(signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1"
        assert outbox.wait(30) == 0
    finally:
        if outbox.poll() is None:
            outbox.kill()
            outbox.wait(10)
