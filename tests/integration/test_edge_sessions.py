"""Persistent sessions of the outbox's MQTT endpoint end when their expiry says, and not before: while the
outbox runs, across a graceful stop and across a crash (a kept session holds the status events it has not
had, so one that is never dropped keeps them all)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from intent_contract import mqtt_packets as p
from intent_contract.mqtt_packets import Type
from tests.support.attach import attached, site_mosquitto
from tests.support.edge import OutboxProcess, email, stored_sessions
from tests.support.mqtt_raw import RawClient
from tests.support.net import free_port, wait_until

STATUSES = "outbox/hvac/status/#"


def leave(client: RawClient) -> None:
    client.send(p.Bare(Type.DISCONNECT))
    assert client.closed_by_server()
    client.close()


@pytest.fixture
def short_expiry(tmp_path: Path) -> Iterator[OutboxProcess]:
    with OutboxProcess(tmp_path / "data", free_port(), "--session-expiry", "2s") as process:
        yield process


def test_a_session_whose_app_left_expires_while_the_outbox_runs(short_expiry: OutboxProcess) -> None:
    app = RawClient(short_expiry.port)
    app.connect("gone", clean=False)
    app.subscribe(STATUSES, 1)
    leave(app)
    # Before, --session-expiry was applied only when the outbox started: the session stayed for ever.
    wait_until(lambda: "gone" not in stored_sessions(short_expiry.data_dir), 15, what="the session expired")
    again = RawClient(short_expiry.port)
    try:
        assert not again.connect("gone", clean=False).session_present
    finally:
        again.close()


def test_a_graceful_stop_does_not_make_an_absent_session_seen(tmp_path: Path) -> None:
    with OutboxProcess(tmp_path / "data", free_port()) as outbox:
        app = RawClient(outbox.port)
        app.connect("away", clean=False)
        app.subscribe(STATUSES, 1)
        subscribed = now_ms()
        wait_until(lambda: now_ms() > subscribed, what="a millisecond to pass")  # after the CONNECT's last_seen
        leaving = now_ms()
        leave(app)
        # The outbox writes when the client left after it has closed the connection: wait for that write (a
        # stored time from before `leaving` is the CONNECT's), not only for the session to be stored.
        wait_until(lambda: stored_sessions(outbox.data_dir).get("away", 0) >= leaving, what="when it left stored")
        left = stored_sessions(outbox.data_dir)["away"]
        wait_until(lambda: now_ms() > left + 200, what="time to pass")
        assert outbox.stop() == 0
    # Before, the stop wrote "seen now" for every stored session, so none ever expired across restarts.
    assert stored_sessions(tmp_path / "data")["away"] == left


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_a_quiet_connected_session_outlives_a_crash(tmp_path: Path) -> None:
    outbox = OutboxProcess(tmp_path / "data", free_port(), "--session-expiry", "3s")
    with outbox:
        listener = RawClient(outbox.port)
        listener.connect("listener", clean=False)
        listener.subscribe(STATUSES, 1)
        connected_at = time.monotonic()
        # Connected and quiet for longer than its expiry: before, nothing wrote that it was there, and the
        # restart after a crash dropped it as unseen.
        wait_until(lambda: time.monotonic() > connected_at + 5, 10, what="the expiry to pass while connected")
        outbox.kill()
        listener.close()
        outbox.start()
        publisher = RawClient(outbox.port)
        publisher.connect("publisher")
        publisher.publish("outbox/hvac/email.send", json.dumps(email("while-away")).encode(), 1)
        publisher.close()
        back = RawClient(outbox.port)
        try:
            assert back.connect("listener", clean=False).session_present
            (status,) = back.messages(1)
            assert json.loads(status.payload)["id"] == "while-away"
        finally:
            back.close()


def test_sessions_of_the_embedded_endpoint_expire_after_the_outbox_moved_to_attach_mode(tmp_path: Path) -> None:
    """A site moved its outbox from the embedded endpoint to attach mode (docs/edge.md's fast path for busy sites):
    no endpoint dropped the persistent sessions stored before, and each held every status event after its position
    for ever (events are pruned only once every stored session has them), so the database grew without end."""
    data = tmp_path / "data"
    with OutboxProcess(data, free_port(), "--session-expiry", "2s") as embedded:
        app = RawClient(embedded.port)
        app.connect("moved-away", clean=False)
        app.subscribe(STATUSES, 1)
        leave(app)
        wait_until(lambda: "moved-away" in stored_sessions(data), what="the session stored")
        assert embedded.stop() == 0
    left = stored_sessions(data)["moved-away"]
    wait_until(lambda: now_ms() > left + 2500, 10, what="the session's expiry to pass")
    with site_mosquitto(tmp_path) as broker, attached(tmp_path, broker, "--session-expiry", "2s") as outbox:
        wait_until(lambda: "attached; subscribed" in outbox.log(), what="outbox attached")
        wait_until(lambda: "moved-away" not in stored_sessions(data), 15, what="the session dropped in attach mode")
