"""Attach mode's test parts: a Mosquitto of the site on a private loopback port, and an outbox attached to it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.support.edge import OutboxProcess
from tests.support.net import free_port, wait_for_port
from tests.support.services import require_binary


def start_mosquitto(conf: Path, *ports: int) -> subprocess.Popen[bytes]:
    """A Mosquitto on the config file `conf`, once it listens on each of `ports`."""
    proc = subprocess.Popen(
        [require_binary("mosquitto"), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for port in ports:
            wait_for_port(port)
    except BaseException:
        proc.terminate()
        proc.wait(10)
        raise
    return proc


@contextlib.contextmanager
def mosquitto(conf: Path, text: str, *ports: int) -> Iterator[None]:
    """A Mosquitto on the config `text` (written to `conf`) while the block runs, listening on each of `ports`."""
    conf.write_text(text)
    proc = start_mosquitto(conf, *ports)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def site_mosquitto(tmp_path: Path) -> Iterator[int]:
    """A Mosquitto that holds every message for the outbox's persistent session while it is away
    (max_queued_messages 0); yields its port."""
    port = free_port()
    text = (
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 0\nmax_inflight_messages 100\n"
    )
    with mosquitto(tmp_path / "mosquitto.conf", text, port):
        yield port


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


def assert_refused_at_start(data_dir: Path, cases: list[tuple[list[str], str]]) -> None:
    """`edge-outbox run` with each case's options stops at start, in a line holding its message, no traceback."""
    for args, message in cases:
        done = subprocess.run(
            [sys.executable, "-m", "edge_outbox", "run", "--data-dir", str(data_dir), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
