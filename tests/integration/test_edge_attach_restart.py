"""Attach mode across restarts of a Mosquitto with persistence, under load: every intent once."""

import collections
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.support.attach import attached
from tests.support.edge import Client, email, stored_ids
from tests.support.net import free_port, wait_for_port, wait_until
from tests.support.services import require_binary


def start_mosquitto(conf: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [require_binary("mosquitto"), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(port)
    return proc


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
