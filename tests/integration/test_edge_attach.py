"""Attach mode against a real Mosquitto on a private loopback port."""

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.edge import Client, OutboxProcess, email, stored_ids
from tests.support.net import free_port, wait_for_port, wait_until
from tests.support.services import require_binary


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[int]:
    binary = require_binary("mosquitto")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    # max_queued_messages 0: hold every message for the outbox's persistent session while it is away.
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


def attached(tmp_path: Path, broker_port: int) -> OutboxProcess:
    return OutboxProcess(
        tmp_path / "data",
        broker_port,
        f"--attach=mqtt://127.0.0.1:{broker_port}",
        "--attach-client-id",
        "outbox-under-test",
    )


def test_mosquitto_pub_intent_is_committed_and_status_published(tmp_path: Path, mosquitto: int) -> None:
    pub = require_binary("mosquitto_pub")
    app = Client(mosquitto, "status-watcher").connect()
    app.subscribe("outbox/hvac/status/#")
    with attached(tmp_path, mosquitto) as outbox:
        wait_until(lambda: "attached; subscribed" in outbox.log(), what="outbox attached")
        subprocess.run(
            [
                pub,
                "-h",
                "127.0.0.1",
                "-p",
                str(mosquitto),
                "-q",
                "1",
                "-t",
                "outbox/hvac/email.send",
                "-m",
                '{"id": "from-cli", "to": "ops@example.com", "subject": "Hi", "text": "t"}',
            ],
            check=True,
            timeout=30,
        )
        subprocess.run(
            [pub, "-h", "127.0.0.1", "-p", str(mosquitto), "-q", "1", "-t", "outbox/hvac/email.send", "-m", "{broken"],
            check=True,
            timeout=30,
        )
        wait_until(lambda: app.status_of("from-cli") == ["accepted"], what="accepted status via mosquitto")
        wait_until(lambda: any(s["code"] == "bad_json" for _, s in app.statuses), what="rejected status")
        assert stored_ids(outbox.data_dir)["from-cli"] == "accepted"
    app.close()


@pytest.mark.timeout(300)
def test_outbox_acks_the_broker_only_after_commit_so_sigkill_loses_nothing(tmp_path: Path, mosquitto: int) -> None:
    """Everything Mosquitto acknowledged to the app ends up committed, across two SIGKILLs of the outbox."""
    outbox = attached(tmp_path, mosquitto).start()
    wait_until(lambda: "attached; subscribed" in outbox.log(), what="outbox attached")
    app = Client(mosquitto, "busy-app").connect()
    total = 3000
    for n in range(total):
        app.publish("outbox/busy/email.send", email(f"m{n}"), name=f"m{n}")
        if n in (800, 1900):
            outbox.kill()  # mid-stream; Mosquitto keeps the rest for the persistent session
            outbox = attached(tmp_path, mosquitto).start()
    wait_until(lambda: len(app.acked) == total, timeout=60, what="broker PUBACKs")
    wait_until(
        lambda: len(stored_ids(outbox.data_dir)) >= total,
        timeout=120,
        interval=0.5,
        what="all intents committed after restarts",
    )
    stored = stored_ids(outbox.data_dir)
    assert app.acked <= stored.keys()
    assert len(stored) == total
    outbox.stop()
    app.close()


def test_attach_to_nothing_keeps_trying_and_attaches_when_the_broker_appears(tmp_path: Path) -> None:
    binary = require_binary("mosquitto")
    port = free_port()
    outbox = attached(tmp_path, port).start()
    time.sleep(1.5)
    assert outbox.proc is not None and outbox.proc.poll() is None, outbox.log()
    conf = tmp_path / "late.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    broker = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: "attached; subscribed" in outbox.log(), timeout=40, what="late attach")
    finally:
        outbox.stop()
        broker.terminate()
        broker.wait(10)


def test_outbox_attaches_again_after_the_broker_restarts(tmp_path: Path) -> None:
    """Mosquitto goes away under an attached outbox and comes back: intents flow again, statuses too."""
    binary = require_binary("mosquitto")
    port = free_port()
    conf = tmp_path / "restart.conf"
    store = tmp_path / "mosquitto-data"
    store.mkdir()
    # Persistence on: the outbox's session (its subscription) survives the restart, as on a site.
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {store}/\n"
        "max_queued_messages 0\n"
    )

    def broker() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port)
        return proc

    first = broker()
    with attached(tmp_path, port) as outbox:
        wait_until(lambda: outbox.log().count("attached; subscribed") == 1, what="outbox attached")
        first.terminate()
        first.wait(10)
        wait_until(lambda: "attach broker connection lost" in outbox.log(), what="loss noticed")
        second = broker()
        try:
            wait_until(lambda: outbox.log().count("attached; subscribed") == 2, timeout=60, what="attached again")
            app = Client(port, "after-restart").connect()
            app.subscribe("outbox/hvac/status/#")
            app.publish("outbox/hvac/email.send", email("after"), name="after")
            wait_until(lambda: app.status_of("after") == ["accepted"], what="accepted status after the restart")
            assert stored_ids(outbox.data_dir)["after"] == "accepted"
            app.close()
        finally:
            second.terminate()
            second.wait(10)
