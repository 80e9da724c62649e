"""The outbox's MQTT endpoint behaves like a broker apps can trust: each behaviour of Eclipse Paho's
MQTT 3.1.1 interoperability suite that amqtt 0.12 failed, against a live outbox, plus the answers
to clients that do not speak MQTT 3.1.1 (MQTT 5 has tests of its own: test_edge_mqtt5.py)."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge_outbox.intake import REFUSAL_LOG_INTERVAL, REFUSAL_LOG_LINES
from edge_outbox.intake_rules import CUT_KEEP
from intent_contract import mqtt_packets as p
from intent_contract.mqtt_packets import Type
from tests.support.edge import OutboxProcess, email, stored_ids
from tests.support.mqtt_raw import RawClient, publish_header
from tests.support.net import free_port, wait_until


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[OutboxProcess]:
    with OutboxProcess(tmp_path / "data", free_port()) as process:
        yield process


@pytest.fixture
def raw(outbox: OutboxProcess) -> Iterator[Callable[[], RawClient]]:
    """Make raw clients of the outbox; all are closed at the end."""
    made: list[RawClient] = []

    def make() -> RawClient:
        made.append(RawClient(outbox.port))
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_a_silent_client_is_dropped_after_its_keepalive_and_its_will_fires(
    outbox: OutboxProcess, raw: Callable[[], RawClient]
) -> None:
    watcher = raw()
    watcher.connect("watcher")
    assert watcher.subscribe("wills/#", 2) == (2,)
    silent = raw()
    silent.connect("silent", keepalive=1, will=p.Will("wills/silent", b"gone", 1, False))
    (will,) = watcher.messages(1, timeout=10)  # 1.5 x keepalive, plus the check
    assert (will.topic, will.payload, will.qos) == ("wills/silent", b"gone", 1)
    assert silent.closed_by_server(timeout=5)


def test_a_clean_disconnect_discards_the_will(outbox: OutboxProcess, raw: Callable[[], RawClient]) -> None:
    watcher = raw()
    watcher.connect("watcher")
    watcher.subscribe("wills/#", 1)
    polite = raw()
    polite.connect("polite", will=p.Will("wills/polite", b"gone", 1, False))
    polite.send(p.Bare(Type.DISCONNECT))
    assert polite.closed_by_server()
    assert watcher.nothing_within(1.0)


def test_unacknowledged_qos1_and_qos2_are_redelivered_with_dup_when_the_session_returns(
    outbox: OutboxProcess, raw: Callable[[], RawClient]
) -> None:
    subscriber = raw()
    assert not subscriber.connect("sub", clean=False).session_present
    subscriber.subscribe("t/#", 2)
    publisher = raw()
    publisher.connect("pub")
    publisher.publish("t/one", b"1", 1)
    publisher.publish("t/two", b"2", 2)
    first = subscriber.messages(2)
    assert all(not m.dup for m in first)
    subscriber.close()  # never acknowledged
    again = raw()
    assert again.connect("sub", clean=False).session_present
    resent = again.messages(2)
    assert [(m.topic, m.qos, m.dup, m.packet_id) for m in resent] == [
        (m.topic, m.qos, True, m.packet_id) for m in first
    ]


def test_a_takeover_keeps_the_session_and_delivers_queued_and_new_messages(
    outbox: OutboxProcess, raw: Callable[[], RawClient]
) -> None:
    old = raw()
    old.connect("app", clean=False)
    old.subscribe("news/#", 1)
    publisher = raw()
    publisher.connect("pub")
    new = raw()
    assert new.connect("app", clean=False).session_present  # while the old connection is still open
    assert old.closed_by_server()
    publisher.publish("news/a", b"after takeover", 1)
    (message,) = new.messages(1)
    assert message.payload == b"after takeover"


def test_two_connects_with_one_client_id_at_once_leave_one_connection(
    outbox: OutboxProcess, raw: Callable[[], RawClient]
) -> None:
    old = raw()
    old.connect("app", clean=False)
    old.subscribe("news/#", 1)
    first, second = raw(), raw()
    connect = p.Connect("MQTT", 4, "app", False, 60)
    first.send(connect)  # both before either CONNACK is read: both take the session over from `old` at once
    second.send(connect)
    assert isinstance(first.receive(), p.Connack)
    assert isinstance(second.receive(), p.Connack)
    assert old.closed_by_server()
    publisher = raw()
    publisher.connect("pub")
    publisher.publish("news/a", b"to the one left", 1)

    def outcome(client: RawClient) -> str:
        try:
            packet = client.receive()
        except ConnectionError:
            return "closed"
        assert isinstance(packet, p.Publish)
        return packet.payload.decode()

    # Whichever came second holds the session and gets the message; the other was closed, not left
    # open on the shared session (before, both stayed connected and one of them was never woken).
    assert sorted([outcome(first), outcome(second)]) == ["closed", "to the one left"]


def test_control_characters_in_a_topic_level_are_refused_written_out(
    outbox: OutboxProcess, raw: Callable[[], RawClient]
) -> None:
    """A newline or an ESC in the app or kind went raw into the store, the status topic and the log (where a
    newline forged a line of its own); the publish is still acknowledged, stored as rejected and reported."""
    watcher = raw()
    watcher.connect("watcher")
    watcher.subscribe("outbox/+/status/#", 1)
    app = raw()
    app.connect("ctl")
    app.publish("outbox/app\nFAKE line\x1b[31m/email.send", json.dumps(email("ctl-1")).encode(), 1)  # PUBACK
    app.publish("outbox/app1/email.send\x07", json.dumps(email("ctl-2")).encode(), 1)
    topics = sorted(m.topic for m in watcher.messages(2))
    assert topics == ["outbox/app1/status/ctl-2", "outbox/app\\u000aFAKE line\\u001b[31m/status/ctl-1"]
    conn = sqlite3.connect(outbox.data_dir / "outbox.db")
    try:
        intents = set(conn.execute("SELECT id, app, kind, state, code FROM intents"))
        events = set(conn.execute("SELECT id, app, kind FROM events"))
    finally:
        conn.close()
    assert intents == {
        ("ctl-1", "app\\u000aFAKE line\\u001b[31m", "email.send", "rejected", "bad_app"),
        ("ctl-2", "app1", "email.send\\u0007", "rejected", "unknown_kind"),
    }
    assert {(i, a, k) for i, a, k, _s, _c in intents} == events
    log = outbox.log()
    assert "rejected input on outbox/app\\u000aFAKE line\\u001b[31m/email.send" in log
    assert not any(line.startswith("FAKE") for line in log.splitlines())
    assert "\x1b" not in log and "\x07" not in log


def test_an_app_refused_in_a_loop_gets_a_log_line_now_and_then(
    outbox: OutboxProcess, raw: Callable[[], RawClient]
) -> None:
    """A line per refused publish let an app fill a small disk with log; each refusal is still stored,
    acknowledged and reported to the app."""
    watcher = raw()
    watcher.connect("watcher")
    watcher.subscribe("outbox/+/status/#", 1)
    app = raw()
    app.connect("looping")
    for n in range(40):
        app.publish("outbox/loop/sms.sendd", json.dumps(email(f"loop-{n}")).encode(), 1)  # each PUBACKed
    app.publish("outbox/other/sms.sendd", json.dumps(email("other-1")).encode(), 1)
    assert len([m for m in watcher.messages(41) if b'"rejected"' in m.payload]) == 41
    lines = [line for line in outbox.log().splitlines() if "rejected input on" in line]
    assert [line.split("rejected input on ")[1].split(":")[0] for line in lines] == [
        "outbox/loop/sms.sendd",
        "outbox/other/sms.sendd",
    ]


def test_an_app_name_per_publish_does_not_buy_a_log_line_per_publish(
    outbox: OutboxProcess, raw: Callable[[], RawClient]
) -> None:
    """App names are the publisher's to choose, and the "rejected input" line was throttled per app: a fresh
    name per publish wrote a line each (300 lines for 300 publishes). All apps together now get
    REFUSAL_LOG_LINES lines per REFUSAL_LOG_INTERVAL; each refusal is still stored and acknowledged."""
    app = raw()
    app.connect("many-names")
    started = time.monotonic()
    for n in range(300):
        app.publish(f"outbox/name-{n}/sms.sendd", json.dumps(email(f"name-{n}")).encode(), 1)  # each PUBACKed
    windows = int((time.monotonic() - started) // REFUSAL_LOG_INTERVAL) + 1
    lines = [line for line in outbox.log().splitlines() if "rejected input on" in line]
    assert 1 <= len(lines) <= REFUSAL_LOG_LINES * windows, len(lines)
    conn = sqlite3.connect(outbox.data_dir / "outbox.db")
    try:
        assert conn.execute("SELECT COUNT(*) FROM intents WHERE state = 'rejected'").fetchone() == (300,)
    finally:
        conn.close()


def test_malformed_packets_in_a_loop_get_a_log_line_now_and_then(
    outbox: OutboxProcess, raw: Callable[[], RawClient]
) -> None:
    """Any process that reaches the port could write a WARNING line per connection, a malformed CONNECT or a
    malformed packet after a good one each: 200 connections wrote 200 lines. They are one line every
    REFUSAL_LOG_INTERVAL now, as the endpoint's other lines about what a client sent, naming the client."""
    started = time.monotonic()
    for n in range(100):
        bad_connect = raw()
        bad_connect.send(b"\x10\x03\x00\x04M")  # the protocol name runs past the packet
        assert bad_connect.closed_by_server()
        bad_publish = raw()
        bad_publish.connect(f"bad-{n}")
        bad_publish.send(b"\x30\x02\x00\x05")  # so does the topic
        assert bad_publish.closed_by_server()
    windows = int((time.monotonic() - started) // REFUSAL_LOG_INTERVAL) + 1
    lines = [line for line in outbox.log().splitlines() if "closing client" in line]
    assert 1 <= len(lines) <= windows, lines[:5]
    assert "peer=127.0.0.1:" in lines[0]  # the client id too, once its CONNECT was read


def test_an_app_publishing_one_id_in_a_loop_gets_a_log_line_now_and_then(
    outbox: OutboxProcess, raw: Callable[[], RawClient]
) -> None:
    """Publishing an id again is an app's right (its idempotency key), and nothing is stored for it; it still
    wrote an INFO line each time: 1,999 lines for 2,000 publishes of one id."""
    app = raw()
    app.connect("repeating")
    for _ in range(40):
        app.publish("outbox/again/email.send", json.dumps(email("same-1")).encode(), 1)  # each PUBACKed
    app.publish("outbox/other/email.send", json.dumps(email("same-2")).encode(), 1)
    app.publish("outbox/other/email.send", json.dumps(email("same-2")).encode(), 1)
    lines = [line for line in outbox.log().splitlines() if "duplicate intent" in line]
    assert [("app=again" in line, "app=other" in line) for line in lines] == [(True, False), (False, True)]


def test_connections_refused_at_their_start_get_a_log_line_now_and_then(
    outbox: OutboxProcess, raw: Callable[[], RawClient]
) -> None:
    """Anything that can reach the port (the LAN, with `listen` on it) wrote a line per connection: 200 connections
    that spoke HTTP wrote 200 lines, and as many for a CONNECT of another protocol or one refused."""

    def closed_after(data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", outbox.port), timeout=10) as sock:
            sock.sendall(data)
            return sock.recv(64)  # the outbox logs, then answers or closes

    for _ in range(20):
        assert closed_after(b"GET / HTTP/1.0\r\n\r\n") == b""
        assert closed_after(b"\x10\x0c\x00\x04XXXX\x04\x02\x00\x3c\x00\x00") == b""  # protocol "XXXX"
        refused = raw().connect("", clean=False)  # 3.1.1: an empty client id needs a clean session
        assert refused.code == p.ConnackCode.IDENTIFIER_REJECTED
    log = outbox.log()
    for line in ("did not start with an MQTT CONNECT", "is not MQTT (protocol 'XXXX')", "refused client from"):
        assert log.count(line) == 1, (line, log[-2000:])


def test_messages_for_an_absent_persistent_session_wait_for_it(
    outbox: OutboxProcess, raw: Callable[[], RawClient]
) -> None:
    app = raw()
    app.connect("away", clean=False)
    app.subscribe("q/#", 1)
    app.send(p.Bare(Type.DISCONNECT))
    app.close()
    publisher = raw()
    publisher.connect("pub")
    publisher.publish("q/1", b"kept", 1)
    back = raw()
    assert back.connect("away", clean=False).session_present
    (message,) = back.messages(1)
    assert (message.payload, message.dup) == (b"kept", False)


def test_pipelined_publishes_are_acknowledged_in_order_each_after_its_commit(
    outbox: OutboxProcess, raw: Callable[[], RawClient]
) -> None:
    """The PUBACKs that one commit releases go out in one write: still in arrival order, none early."""
    client = raw()
    client.connect("pipeliner")
    count = 300
    packets = [
        p.Publish("outbox/app/email.send", json.dumps(email(f"pipe-{n}")).encode(), 1, False, False, n + 1)
        for n in range(count)
    ]
    client.send(b"".join(p.encode(packet) for packet in packets))  # all at once, as a busy app would
    acked: list[int] = []
    while len(acked) < count:
        ack = client.receive()
        assert isinstance(ack, p.PacketIdOnly) and ack.type is Type.PUBACK, ack
        assert f"pipe-{ack.packet_id - 1}" in stored_ids(outbox.data_dir), f"PUBACK {ack.packet_id} before its commit"
        acked.append(ack.packet_id)
    assert acked == list(range(1, count + 1))


def test_a_suback_comes_before_the_retained_messages_of_a_persistent_session(
    outbox: OutboxProcess, raw: Callable[[], RawClient]
) -> None:
    """A persistent session's SUBACK waits for the session's commit; its retained messages follow it."""
    retainer = raw()
    retainer.connect("retainer")
    retainer.publish("r/topic", b"kept", 1, retain=True)
    client = raw()
    client.connect("keeper", clean=False)
    client.send(p.Subscribe(7, (("r/#", 1),)))
    first = client.receive()
    assert isinstance(first, p.Suback) and first.packet_id == 7, first
    (retained,) = client.messages(1)
    assert (retained.payload, retained.retain) == (b"kept", True)


@pytest.mark.parametrize("clear_qos", [0, 1, 2])
def test_an_empty_retained_publish_clears_the_retained_message_at_any_qos(
    outbox: OutboxProcess, raw: Callable[[], RawClient], clear_qos: int
) -> None:
    client = raw()
    client.connect("retainer")
    client.publish("r/topic", b"kept", 1, retain=True)
    first = raw()
    first.connect("first")
    first.subscribe("r/#", 2)
    (retained,) = first.messages(1)
    assert (retained.payload, retained.retain) == (b"kept", True)
    client.publish("r/topic", b"", clear_qos, retain=True)
    later = raw()
    later.connect("later")
    later.subscribe("r/#", 2)
    assert later.nothing_within(1.0)


@pytest.mark.parametrize(("published", "granted", "delivered"), [(2, 0, 0), (2, 1, 1), (1, 2, 1), (0, 2, 0)])
def test_delivered_qos_is_the_lower_of_published_and_granted(
    outbox: OutboxProcess, raw: Callable[[], RawClient], published: int, granted: int, delivered: int
) -> None:
    subscriber = raw()
    subscriber.connect("sub")
    assert subscriber.subscribe("x/y", granted) == (granted,)
    publisher = raw()
    publisher.connect("pub")
    publisher.publish("x/y", b"m", published)
    (message,) = subscriber.messages(1)
    assert message.qos == delivered


def test_wildcards_do_not_match_dollar_topics_and_bad_filters_are_refused(
    outbox: OutboxProcess, raw: Callable[[], RawClient]
) -> None:
    client = raw()
    client.connect("c")
    assert client.subscribe("+/+", 1) == (1,)
    assert client.subscribe("a/#/b", 1) == (p.SUBACK_FAILURE,)
    client.publish("$SYS/x", b"", 1)
    assert client.nothing_within(0.5)


def test_an_empty_client_id_needs_a_clean_session(outbox: OutboxProcess, raw: Callable[[], RawClient]) -> None:
    assert raw().connect("", clean=False).code == p.ConnackCode.IDENTIFIER_REJECTED
    assert raw().connect("", clean=True).code == p.ConnackCode.ACCEPTED


def test_a_second_connect_on_one_connection_closes_it(outbox: OutboxProcess, raw: Callable[[], RawClient]) -> None:
    client = raw()
    client.connect("twice")
    client.send(p.Connect("MQTT", 4, "twice", True, 60))
    assert client.closed_by_server()


def test_mqtt31_clients_are_served_and_an_unknown_level_gets_connack_1(
    outbox: OutboxProcess, raw: Callable[[], RawClient]
) -> None:
    client = raw()
    client.send(p.Connect("MQIsdp", 3, "old-client", True, 60))
    assert client.receive() == p.Connack(False, p.ConnackCode.ACCEPTED)
    client.publish("v31/t", b"x", 1)
    other = raw()
    other.send(p.Connect("MQTT", 9, "future", True, 60))
    assert other.receive() == p.Connack(False, p.ConnackCode.BAD_PROTOCOL_VERSION)
    assert other.closed_by_server()


def test_a_plain_tcp_probe_and_garbage_log_no_error(outbox: OutboxProcess, raw: Callable[[], RawClient]) -> None:
    with socket.create_connection(("127.0.0.1", outbox.port), timeout=5):
        pass  # a port check: connect and leave
    with socket.create_connection(("127.0.0.1", outbox.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(16) == b""  # closed, no answer
    client = raw()
    client.connect("then-fine")
    client.publish("ok/t", b"x", 1)
    assert " ERROR " not in outbox.log() and "Traceback" not in outbox.log(), outbox.log()


def test_a_packet_over_the_limit_is_refused_before_it_is_read(
    outbox: OutboxProcess, raw: Callable[[], RawClient]
) -> None:
    client = raw()
    client.connect("big")
    client.send(bytes([0x82, 0x80, 0x80, 0x80, 0x10]))  # a SUBSCRIBE announcing 32 MiB, none of it sent
    assert client.closed_by_server(timeout=5)
    wait_until(lambda: "over the" in outbox.log(), what="the refusal in the log")
    # A PUBLISH over the limit is read only as far as its head (an intent is refused as too_large and
    # acknowledged: test_edge_app_contract.py); one to any other topic is refused then.
    other = raw()
    other.connect("big-other")
    other.send(publish_header("t/big", 32 << 20) + bytes(CUT_KEEP))
    assert other.closed_by_server(timeout=5)  # its line is left out: one "closing client" line every 10 s


def test_a_will_on_a_status_topic_is_dropped_like_a_publish_there(
    outbox: OutboxProcess, raw: Callable[[], RawClient]
) -> None:
    """Only the outbox publishes statuses. A PUBLISH to a status topic was dropped, but a will was routed there
    unchecked: any local client could leave a forged `delivered` for another app's intent, retained, so that
    every later subscriber to that app's statuses got it too."""
    forged = json.dumps({"id": "alarm-1", "kind": "email.send", "state": "delivered", "code": "", "detail": "",
                         "at": "2026-01-01T00:00:00Z", "seq": 999_999}).encode()  # fmt: skip
    app = raw()
    app.connect("app")
    app.subscribe("outbox/app/status/#", 1)
    rogue = raw()
    rogue.connect("rogue", will=p.Will("outbox/app/status/alarm-1", forged, 1, True))
    rogue.close()  # no DISCONNECT: its will is sent
    raw().connect("rogue")  # taken over once the old connection ended, which sends the will first

    def statuses_until(client: RawClient, intent_id: str) -> list[str]:
        """Ids of the statuses `client` gets up to a real one for `intent_id` (published after the will)."""
        ids: list[str] = []
        while not ids or ids[-1] != intent_id:
            (message,) = client.messages(1)
            ids.append(json.loads(message.payload)["id"])
        return ids

    app.publish("outbox/app/email.send", json.dumps(email("real-1")).encode(), 1)
    assert statuses_until(app, "real-1") == ["real-1"]
    late = raw()
    late.connect("late")
    late.subscribe("outbox/app/status/#", 1)  # a retained forgery would come right after the SUBACK
    late.publish("outbox/app/email.send", json.dumps(email("real-2")).encode(), 1)
    assert statuses_until(late, "real-2") == ["real-2"]
    wait_until(lambda: "published to status topic 'outbox/app/status/alarm-1'" in outbox.log(), what="the log line")


def test_an_app_back_on_its_client_id_is_not_held_by_its_old_connection_that_stopped_reading(
    outbox: OutboxProcess, raw: Callable[[], RawClient]
) -> None:
    # The app hung (or its machine dropped off) holding a connection that no longer reads: what the outbox writes
    # to it stays in the outbox's buffer. Closing a connection waited for that buffer to be sent, for ever, so the
    # app restarted on its client id never got a CONNACK (nor did any later try), and the stuck handler stayed.
    hung = socket.socket()
    hung.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hung.connect(("127.0.0.1", outbox.port))
    hung.sendall(p.encode(p.Connect("MQTT", 4, "app", False, 60)) + p.encode(p.Subscribe(1, (("t/#", 0),))))
    publisher = raw()
    publisher.connect("pub")
    # Until the session's queue overflows: its pump is stuck behind a full write buffer.
    wait_until(lambda: publisher.publish("t/x", b"x" * 60_000, 1) or "session app had" in outbox.log(),
               timeout=60, what="the hung connection's queue to overflow")  # fmt: skip
    back = raw()
    assert back.connect("app", clean=False).session_present
    publisher.publish("t/x", b"after", 1)
    wait_until(lambda: back.messages(1)[0].payload == b"after", what="the session's messages, then the new one")
    hung.close()


def test_a_will_is_sent_when_its_client_fails_not_when_the_outbox_stops(outbox: OutboxProcess) -> None:
    # An app's will on an intake topic ("email ops: the hvac app is down") was stored as an intent each time the
    # outbox stopped (an upgrade, systemctl restart) while the app was fine: every restart a false alarm.
    def will(intent_id: str) -> p.Will:
        return p.Will("outbox/hvac/email.send", json.dumps(email(intent_id)).encode(), 1, False)

    failing = RawClient(outbox.port)
    failing.connect("hvac-1", will=will("hvac-1-down"))
    failing.close()  # gone without DISCONNECT: its will is sent
    wait_until(lambda: stored_ids(outbox.data_dir).get("hvac-1-down") == "accepted", what="the failed client's will")
    fine = RawClient(outbox.port)
    fine.connect("hvac-2", will=will("hvac-2-down"))
    try:
        assert outbox.stop() == 0
    finally:
        fine.close()
    assert "hvac-2-down" not in stored_ids(outbox.data_dir)
