"""Attach mode's test parts: a Mosquitto of the site on a private loopback port, and an outbox attached to it."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support.edge import OutboxProcess
from tests.support.net import free_port, wait_for_port
from tests.support.services import require_binary


@contextlib.contextmanager
def site_mosquitto(tmp_path: Path) -> Iterator[int]:
    """A Mosquitto that holds every message for the outbox's persistent session while it is away
    (max_queued_messages 0); yields its port."""
    binary = require_binary("mosquitto")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\nmax_inflight_messages 100\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def attached(tmp_path: Path, broker_port: int, *extra: str) -> OutboxProcess:
    """An outbox (not started) attached to the broker on `broker_port` as `outbox-under-test`, with `extra`
    options."""
    return OutboxProcess(
        tmp_path / "data",
        broker_port,
        f"--attach=mqtt://127.0.0.1:{broker_port}",
        "--attach-client-id",
        "outbox-under-test",
        *extra,
    )
