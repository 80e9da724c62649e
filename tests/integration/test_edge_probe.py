"""The outbox's optional /metrics and /healthz: real Prometheus text, named by Prometheus conventions."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.edge import Client, OutboxProcess, email
from tests.support.metrics import check_conventions
from tests.support.net import free_port, wait_until


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_and_health_of_a_live_outbox(tmp_path: Path) -> None:
    metrics_port = free_port()
    with OutboxProcess(tmp_path / "data", free_port(), "--metrics", f"127.0.0.1:{metrics_port}") as outbox:
        status, text = fetch(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        # Every outcome from 0, before its first event: rate() misses a series that appears at its first sample.
        before = {s.labels["outcome"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
                  if s.name == "edge_outbox_intake_total"}  # fmt: skip
        assert before == {"accepted": 0, "rejected": 0, "expired": 0, "duplicate": 0}
        app = Client(outbox.port, "app").connect()
        for n in range(3):
            app.publish("outbox/app/email.send", email(f"m{n}"), name=f"m{n}")
        app.publish("outbox/app/fax.send", {"id": "bad"}, name="bad")
        wait_until(lambda: len(app.acked) == 4, what="PUBACKs")
        status, text = fetch(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        check_conventions(families.values(), prefix="edge_outbox_")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
        assert samples[("edge_outbox_intents", (("state", "accepted"),))] == 3
        assert samples[("edge_outbox_intake_total", (("outcome", "accepted"),))] == 3
        assert samples[("edge_outbox_intake_total", (("outcome", "rejected"),))] == 1
        assert samples[("edge_outbox_apps_connected", ())] == 1
        assert samples[("edge_outbox_oldest_pending_age_seconds", ())] >= 0
        assert samples[("edge_outbox_commit_duration_seconds_count", ())] >= 1
        status, body = fetch(f"http://127.0.0.1:{metrics_port}/healthz")
        assert (status, body) == (200, '{"status": "ok", "problems": []}')
        app.close()


def test_the_endpoint_refuses_anything_but_loopback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge_outbox", "run", "--data-dir", str(tmp_path / "d"),
         "--listen", f"127.0.0.1:{free_port()}", "--metrics", f"0.0.0.0:{free_port()}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "no authentication; give a loopback address" in result.stderr
    assert "Traceback" not in result.stderr


def _open(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if data:
        sock.sendall(data)
    return sock


def _closed(sock: socket.socket) -> bool:
    """The outbox closed it (a read times out, a failure, when it never does)."""
    with sock:
        try:
            return sock.recv(65536) == b""
        except ConnectionResetError:
            return True


def test_what_a_local_process_can_hold_on_the_endpoint_is_bounded(tmp_path: Path) -> None:
    """Any process on the host reaches this port. It took every connection and held an unfinished request for
    ever (1,100 of them took every descriptor of an outbox run with systemd's soft limit of 1,024), logged a
    traceback for every malformed request (6.8 MB of log in 5 s), and a client pipelining scrapes without
    reading held a SIGTERM for two minutes, past the unit's TimeoutStopSec."""
    port = free_port()
    outbox = OutboxProcess(tmp_path / "data", free_port(), "--metrics", f"127.0.0.1:{port}").start()
    try:
        held = [_open(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n") for _ in range(16)]  # unfinished
        over = _closed(_open(port))  # the 17th: closed at once
        cut_off = [_closed(sock) for sock in held]  # at REQUEST_TIMEOUT_S (10 s)
        bad = b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n"
        answers = []
        for _ in range(200):
            with _open(port, bad) as sock:
                answers.append(sock.recv(12))
        assert fetch(f"http://127.0.0.1:{port}/healthz")[0] == 200  # still serving
        stalled = _open(port)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            for _ in range(300):
                stalled.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 100)  # pipelined, never read
        started = time.monotonic()
        assert outbox.stop() == 0
        stopped_in = time.monotonic() - started
        stalled.close()
    finally:
        outbox.stop()
    assert over
    assert cut_off == [True] * 16
    assert set(answers) == {b"HTTP/1.0 400"}
    log = outbox.log_path.read_text()
    assert log.count("Error handling request") == 1  # 200 bad requests, in 10 s
    assert "Traceback" not in log
    assert stopped_in < 10, f"stopped {stopped_in:.1f} s after SIGTERM"


def test_health_answers_while_another_program_holds_the_database(tmp_path: Path) -> None:
    """/healthz read through the writer, behind groups that each waited out the busy timeout while another program
    held the write lock (a backup, `sqlite3` left in a transaction): it never answered (cut off at 10 s), not
    even that intake was paused."""
    metrics_port = free_port()
    with OutboxProcess(tmp_path / "data", free_port(), "--metrics", f"127.0.0.1:{metrics_port}") as outbox:
        app = Client(outbox.port, "locked-app").connect()
        app.publish("outbox/locked/email.send", email("before"), name="before")
        wait_until(lambda: app.acked == {"before"}, what="stored")
        with contextlib.closing(sqlite3.connect(tmp_path / "data" / "outbox.db", isolation_level=None)) as holder:
            holder.execute("BEGIN IMMEDIATE")
            app.publish("outbox/locked/email.send", email("during"), name="during")

            def answered() -> tuple[int, str] | None:
                try:
                    return fetch(f"http://127.0.0.1:{metrics_port}/healthz")
                except OSError:  # cut off unanswered
                    return None

            _status, body = wait_until(
                lambda: (found := answered()) and found[0] == 503 and found, timeout=60, what="503 with the reason"
            )
            assert "intake paused" in body and "database is locked" in body, body
            holder.execute("ROLLBACK")
        wait_until(lambda: "during" in app.acked, timeout=30, what="stored once the lock is gone")
        app.close()
