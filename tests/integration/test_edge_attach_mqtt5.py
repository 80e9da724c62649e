"""Attach mode speaks MQTT 5 to the site's Mosquitto (on a private loopback port): what only version 5 carries
reaches the outbox, and a session kept by an outbox that attached with 3.1.1 goes on."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
from pathlib import Path

import mqtt5
import pytest

from tests.integration.test_edge_attach import acl_mosquitto, start_mosquitto
from tests.support.attach import attached, site_mosquitto
from tests.support.edge import OutboxProcess, email, stored_ids
from tests.support.mqtt_raw import RawClient
from tests.support.net import free_port, wait_until
from tests.support.services import require_binary


class App5:
    """An MQTT 5 app on a raw socket: publishes at QoS 1 and waits for the broker's PUBACK."""

    def __init__(self, port: int, client_id: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.sock.sendall(mqtt5.ConnectPacket(client_id, clean_start=True, keep_alive=60).write())
        connack = self.receive()
        assert isinstance(connack, mqtt5.ConnAckPacket) and int(connack.reason_code) == 0

    def receive(self) -> mqtt5.Packet:
        while True:
            try:
                packet, size = mqtt5.read(memoryview(self.buf))
            except (ValueError, IndexError):  # not whole yet
                data = self.sock.recv(1 << 16)
                assert data, "the broker closed the connection"
                self.buf += data
                continue
            self.buf = self.buf[size:]
            return packet

    def publish(self, topic: str, payload: bytes, *, expiry_s: int | None = None, packet_id: int = 1) -> None:
        packet = mqtt5.PublishPacket(
            topic, payload, qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=packet_id, message_expiry_interval=expiry_s
        )
        self.sock.sendall(packet.write())
        ack = self.receive()
        assert isinstance(ack, mqtt5.PubAckPacket) and ack.packet_id == packet_id

    def close(self) -> None:
        self.sock.sendall(mqtt5.DisconnectPacket().write())
        self.sock.close()


def deadline_ms(data_dir: Path, intent_id: str) -> int | None:
    """How long after its creation the stored intent expires (None: it has no deadline)."""
    conn = sqlite3.connect(data_dir / "outbox.db")
    try:
        created, expires = conn.execute("SELECT created, expires FROM intents WHERE id = ?", (intent_id,)).fetchone()
    finally:
        conn.close()
    return None if expires is None else int(expires - created)


def test_an_apps_message_expiry_through_the_broker_is_the_intents_deadline(tmp_path: Path) -> None:
    """The outbox spoke MQTT 3.1.1 to the broker, which dropped the expiry: the intent had no deadline at all."""
    with site_mosquitto(tmp_path) as port, attached(tmp_path, port) as outbox:
        wait_until(lambda: "attached; subscribed" in outbox.log(), what="attached")
        app = App5(port, "expiring-app")
        app.publish("outbox/hvac/email.send", json.dumps(email("expiring")).encode(), expiry_s=120)
        app.publish("outbox/hvac/email.send", json.dumps(email("own-ttl", ttl=30)).encode(), expiry_s=120, packet_id=2)
        app.close()
        both = {"expiring": "accepted", "own-ttl": "accepted"}
        wait_until(lambda: stored_ids(outbox.data_dir) == both, what="both stored")
        # The broker passes on what is left of the interval, in whole seconds, when it sends the message on.
        left = deadline_ms(outbox.data_dir, "expiring")
        assert left is not None
        assert 110_000 <= left <= 120_000
        assert deadline_ms(outbox.data_dir, "own-ttl") == 30_000  # the intent's own ttl stands, as on the endpoint


def test_a_session_the_outbox_kept_with_mqtt_3_1_1_goes_on_with_mqtt_5(tmp_path: Path) -> None:
    """An outbox upgraded to one that attaches with MQTT 5 finds what was published while it was away."""
    with site_mosquitto(tmp_path) as port:
        before = RawClient(port)  # the earlier outbox: clean session off, subscribed at QoS 1
        assert before.connect("outbox-under-test", clean=False).code == 0
        assert before.subscribe("outbox/+/+", 1) == (1,)
        before.send(bytes([0xE0, 0]))  # DISCONNECT
        before.close()
        app = RawClient(port)
        assert app.connect("app").code == 0
        app.publish("outbox/hvac/email.send", json.dumps(email("while-away")).encode(), 1)
        app.close()
        with attached(tmp_path, port) as outbox:
            wait_until(lambda: "attached; subscribed to outbox/+/+ (MQTT 5)" in outbox.log(), what="attached")
            wait_until(lambda: "while-away" in stored_ids(outbox.data_dir), what="the intent kept by the session")
            assert "had no session" not in outbox.log()


@pytest.mark.timeout(120)
def test_a_status_the_brokers_acl_refuses_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mosquitto drops a publish its ACL denies; to a 3.1.1 client it says nothing (a plain PUBACK), so apps heard
    no status and nothing said why. To MQTT 5 it answers PUBACK 0x87 (not authorized)."""
    port = free_port()
    # The outbox's user may write an intent (this test publishes as it) and not statuses.
    broker = acl_mosquitto(tmp_path, port, "topic read outbox/+/+\n", "topic write outbox/hvac/email.send\n")
    monkeypatch.setenv("EDGE_OUTBOX_ATTACH_PASSWORD", "pw")
    outbox = OutboxProcess(tmp_path / "data", port, f"--attach=mqtt://outbox@127.0.0.1:{port}").start()
    try:
        wait_until(lambda: "attached; subscribed" in outbox.log(), what="subscribed")
        subprocess.run(
            [
                require_binary("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(port), "-u", "outbox", "-P", "pw",
                "-q", "1", "-t", "outbox/hvac/email.send", "-m", json.dumps(email("unheard")),
            ],
            check=True,
            timeout=30,
        )  # fmt: skip
        wait_until(lambda: "unheard" in stored_ids(outbox.data_dir), what="stored")
        wait_until(lambda: "the attach broker refused a status (not authorized)" in outbox.log(), what="named")
        assert "let user 'outbox' write outbox/+/status/#" in outbox.log()
    finally:
        outbox.stop()
        broker.terminate()
        broker.wait(10)


def test_statuses_reach_apps_through_a_broker_that_takes_qos_0_only(tmp_path: Path) -> None:
    """Mosquitto's max_qos 0 ends the connection of a client that publishes at QoS 1 ("Too high QoS in PUBLISH"):
    each status the outbox published ended its link, no app heard one, and the outbox reconnected for ever.
    Its MQTT 5 CONNACK says maximum QoS 0, and statuses go at QoS 0."""
    port = free_port()
    conf = tmp_path / "qos0.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nmax_qos 0\nallow_anonymous true\npersistence false\n")
    broker = start_mosquitto(require_binary("mosquitto"), conf, port)
    app = RawClient(port)
    try:
        assert app.connect("watching-app").code == 0
        assert app.subscribe("outbox/hvac/status/#", 0) == (0,)
        with attached(tmp_path, port) as outbox:
            wait_until(lambda: "attached; subscribed" in outbox.log(), what="attached")
            for name in ("q0-first", "q0-second"):
                app.publish("outbox/hvac/email.send", json.dumps(email(name)).encode(), 0)
            statuses = [json.loads(m.payload) for m in app.messages(2)]
            assert [(s["id"], s["state"]) for s in statuses] == [("q0-first", "accepted"), ("q0-second", "accepted")]
            assert "connection lost" not in outbox.log()
    finally:
        app.close()
        broker.terminate()
        broker.wait(10)


def test_a_status_over_the_brokers_maximum_packet_size_is_not_sent_and_the_rest_go_on(tmp_path: Path) -> None:
    """Mosquitto's max_packet_size ends the connection of a client that sends a larger packet: a status over it
    ended the outbox's link, was sent again on the next, for ever, and no status behind it reached an app."""
    port = free_port()
    conf = tmp_path / "small.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nmax_packet_size 250\nallow_anonymous true\npersistence false\n")
    broker = start_mosquitto(require_binary("mosquitto"), conf, port)
    app = RawClient(port)
    long_id = "L" * 64  # in the status's topic and payload: about 280 bytes, where the intent is about 180
    try:
        assert app.connect("watching-app").code == 0
        assert app.subscribe("outbox/hvac/status/#", 1) == (1,)
        with attached(tmp_path, port) as outbox:
            wait_until(lambda: "attached; subscribed" in outbox.log(), what="attached")
            for name in (long_id, "short"):
                app.publish("outbox/hvac/email.send", json.dumps(email(name)).encode(), 1)
            (status,) = [json.loads(m.payload) for m in app.messages(1)]
            assert (status["id"], status["state"]) == ("short", "accepted")
            assert stored_ids(outbox.data_dir) == {long_id: "accepted", "short": "accepted"}
            assert f"the status accepted of {long_id} (" in outbox.log()
            assert "over the attach broker's maximum packet size (250): not sent" in outbox.log()
            assert "connection lost" not in outbox.log()
    finally:
        app.close()
        broker.terminate()
        broker.wait(10)
