"""Attach mode across restarts: of a Mosquitto with persistence under load (every intent once), and of the outbox
moved from its embedded endpoint to attach mode."""

import collections
import re
import sqlite3
from pathlib import Path

import pytest

from tests.support.attach import attached, site_mosquitto, start_mosquitto
from tests.support.edge import Client, OutboxProcess, email, stored_ids
from tests.support.net import free_port, wait_until


def taken_per_marker(data_dir: Path) -> collections.Counter[str]:
    """How many intents were stored with each `text` marker."""
    conn = sqlite3.connect(data_dir / "outbox.db")
    try:
        rows = conn.execute("SELECT payload FROM intents").fetchall()
    finally:
        conn.close()
    return collections.Counter(m.group(1).decode() for (raw,) in rows if (m := re.search(rb"(n\d+)", bytes(raw))))


@pytest.mark.timeout(300)
def test_intents_without_an_id_are_taken_once_across_broker_restarts_under_load(tmp_path: Path) -> None:
    """Mosquitto (persistence on) restarted twice while an app publishes intents without ids: the broker sends again
    what the outbox had taken and not acknowledged, and what it acknowledged as the broker stopped (Mosquitto had not
    read those PUBACKs). Each such copy was taken as one more intent: about 100 of 6,000 were stored (and sent)
    twice."""
    port = free_port()
    store = tmp_path / "mosquitto-data"
    store.mkdir()
    conf = tmp_path / "mosquitto.conf"
    # As root, Mosquitto switches to its own user, which cannot write pytest's directory: `user root` keeps it root.
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {store}/\n"
        "max_queued_messages 0\nuser root\n"
    )
    broker = start_mosquitto(conf, port)
    app = Client(port, "busy-app", clean=False)
    try:
        with attached(tmp_path, port) as outbox:
            wait_until(lambda: "attached; subscribed" in outbox.log(), what="outbox attached")
            app.connect()
            total = 6000
            for n in range(total):
                app.publish("outbox/busy/email.send", email(text=f"n{n}"), name=f"n{n}")
                if n in (2000, 4000):  # while the outbox takes what came before
                    broker.terminate()
                    broker.wait(10)
                    broker = start_mosquitto(conf, port)
            wait_until(lambda: len(app.acked) == total, timeout=120, what="the broker's PUBACKs")
            # The broker sends a session what it holds in order: once this is stored, every copy came before it.
            app.publish("outbox/busy/email.send", email("last"))
            wait_until(lambda: "last" in stored_ids(outbox.data_dir), timeout=120, interval=0.5, what="the last one")
            taken = taken_per_marker(outbox.data_dir)
            assert set(taken) == {f"n{n}" for n in range(total)}  # none lost
            assert [marker for marker, count in taken.items() if count > 1] == []
    finally:
        app.close()
        broker.terminate()
        broker.wait(10)


def test_an_outbox_moved_to_attach_mode_does_not_publish_its_status_history_again(tmp_path: Path) -> None:
    """The first attach on a data dir the embedded endpoint had used published every stored status (up to
    --status-history, 24 h of them on a busy site) to the site broker and every app listening there: the broker, a
    new consumer, started at position 0. Now it starts where a new persistent session does, at the newest."""
    data = tmp_path / "data"
    with OutboxProcess(data, free_port()) as embedded:
        app = Client(embedded.port, "before").connect()
        for n in range(3):
            app.publish("outbox/hvac/email.send", email(f"old-{n}"), name=f"old-{n}")
        wait_until(lambda: len(app.acked) == 3, what="PUBACKs of the embedded endpoint")
        app.close()
        assert embedded.stop() == 0
    with site_mosquitto(tmp_path) as broker:
        listener = Client(broker, "listener").connect()
        listener.subscribe("outbox/+/status/#")
        with attached(tmp_path, broker) as outbox:
            wait_until(lambda: "attached; subscribed" in outbox.log(), what="outbox attached")
            listener.publish("outbox/hvac/email.send", email("new"))
            wait_until(lambda: listener.status_of("new") == ["accepted"], what="the new intent's status")
            # Statuses go out in seq order: an old one would have come before.
            assert [s["id"] for _topic, s in listener.statuses] == ["new"]
            assert "had no session" not in outbox.log()  # a first attach: the broker had none to lose
        listener.close()
