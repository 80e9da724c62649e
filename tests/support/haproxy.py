"""HAProxy, the balancer of compose/cloud.yml, in front of bridges on loopback (skipped where it is not installed)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.net import wait_for_port


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if found is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    return found


@contextlib.contextmanager
def running_haproxy(config: str, directory: Path, ports: list[int]) -> Iterator[None]:
    """HAProxy on `config` (its log in `directory`), once it listens on every one of `ports`."""
    binary = haproxy_binary()
    path = directory / "haproxy.cfg"
    path.write_text(config)
    with (directory / "haproxy.log").open("wb") as log:
        process = subprocess.Popen([binary, "-db", "-f", str(path)], stdout=log, stderr=subprocess.STDOUT)
    try:
        for port in ports:
            wait_for_port(port)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


def tcp_balancer(fronts: dict[int, tuple[int, str]], source: str = "127.0.0.1") -> str:
    """A HAProxy config in TCP mode: each front port on 127.0.0.1 to one server port, with `send-proxy`,
    `send-proxy-v2` or nothing after it; HAProxy connects to the servers from `source`."""
    lines = [
        "global",
        "    log stdout format raw local0",
        "defaults",
        "    log global",
        "    option tcplog",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 1m",
        "    timeout server 1m",
    ]
    for front, (server, option) in fronts.items():
        lines += [
            f"listen front_{front}",
            f"    bind 127.0.0.1:{front}",
            f"    server node 127.0.0.1:{server} source {source} {option}",
        ]
    return "\n".join(lines) + "\n"
