"""Attach mode against a Mosquitto that drops messages over its queue limits (its default max_queued_messages is
1000 a client): the outbox names what the broker counts as dropped."""

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.attach import attached, mosquitto
from tests.support.edge import Client, email
from tests.support.mqtt_raw import RawClient
from tests.support.net import free_port, wait_until

DROPPED = "$SYS/broker/publish/messages/dropped"


@pytest.fixture
def dropping_mosquitto(tmp_path: Path) -> Iterator[int]:
    """A Mosquitto that queues at most 10 messages for a client away (or behind), and says its counts each second."""
    port = free_port()
    text = f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 10\nsys_interval 1\n"
    with mosquitto(tmp_path / "dropping.conf", text, port):
        yield port


def test_intents_the_site_broker_dropped_while_the_outbox_was_away_are_named(
    tmp_path: Path, dropping_mosquitto: int
) -> None:
    """The outbox stopped (an upgrade, a restart) while apps published 30 intents: Mosquitto acknowledged each to the
    app, kept 10 for the outbox's session and dropped 20. Nothing in the outbox said so: they were just never there.
    Now the broker's count of dropped messages is read from $SYS and named, and each later increase too."""
    outbox = attached(tmp_path, dropping_mosquitto)
    with outbox:
        wait_until(lambda: "attached; subscribed" in outbox.log(), what="outbox attached")
        assert outbox.stop() == 0
    app = Client(dropping_mosquitto, "app").connect()
    app.subscribe(DROPPED)  # the broker's count: JSON too, for this client's list of what it heard
    for n in range(30):
        app.publish("outbox/hvac/email.send", email(f"away-{n}"), name=f"away-{n}")
    wait_until(lambda: len(app.acked) == 30, what="the broker's PUBACKs")
    wait_until(lambda: (DROPPED, 20) in app.statuses, 30, what="the broker to count the 20 dropped")
    with outbox:
        wait_until(lambda: "the site broker has dropped 20 messages since it started" in outbox.log(), 30,
                   what="the drops named")  # fmt: skip
        # Another client's session over the limit: the count is the broker's, and each increase is named.
        slow = RawClient(dropping_mosquitto)
        slow.connect("slow-app", clean=False)
        slow.subscribe("elsewhere/#", 1)
        slow.close()
        for n in range(15):
            app.publish("elsewhere/x", b"m%d" % n)
        wait_until(lambda: more(outbox.log()) == 5, 30, what="the increase named")  # in one line or more
    app.close()


def more(log: str) -> int:
    """The increases of the broker's count named in `log`, added up."""
    return sum(int(n) for n in re.findall(r"the site broker dropped (\d+) more messages", log))
