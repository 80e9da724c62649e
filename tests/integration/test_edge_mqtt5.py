"""MQTT 5 apps against a live outbox, with paho's MQTT 5 client: reason codes on PUBACK, session
expiry across a SIGKILL of the outbox, message expiry as an intent's deadline, status content type."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mqtt5
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_outbox.apps_auth import hash_password
from tests.support.edge import OutboxProcess, email, stored_ids, stored_sessions
from tests.support.mqtt_raw import RawClient
from tests.support.net import free_port, release_paho, wait_until


class App5:
    """A paho MQTT 5 client that records PUBACK reason codes and received statuses."""

    def __init__(self, port: int, client_id: str, *, session_expiry: int = 0, max_packet: int = 0) -> None:
        self.acks: dict[int, tuple[int, str]] = {}  # mid -> (reason code, reason string)
        self.statuses: list[tuple[dict[str, Any], Any]] = []  # (status, properties)
        self.connack: Any = None
        self._lock = threading.Lock()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 2)
        props = Properties(PacketTypes.CONNECT)
        if session_expiry:
            props.SessionExpiryInterval = session_expiry
        if max_packet:
            props.MaximumPacketSize = max_packet
        client.connect("127.0.0.1", port, keepalive=30, clean_start=False, properties=props)
        client.loop_start()
        self.client = client
        wait_until(lambda: self.connack is not None, what="CONNACK")

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = (flags.session_present, reason.value, props)

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, props: Any) -> None:
        why = getattr(props, "ReasonString", "") if props is not None else ""
        with self._lock:
            self.acks[mid] = (reason.value, why)

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.statuses.append((json.loads(message.payload), message.properties))

    def publish(self, topic: str, body: dict[str, Any], props: Properties | None = None) -> int:
        return self.client.publish(topic, json.dumps(body), qos=1, properties=props).mid

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_args: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(10), "no SUBACK"

    def ids_with(self, state: str) -> set[str]:
        with self._lock:
            return {s["id"] for s, _p in self.statuses if s["state"] == state}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        release_paho(self.client)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[OutboxProcess]:
    with OutboxProcess(tmp_path / "data", free_port()) as process:
        yield process


def test_puback_reason_codes_say_what_became_of_each_intent(outbox: OutboxProcess) -> None:
    app = App5(outbox.port, "v5-app")
    try:
        assert app.connack[1] == 0
        assert app.connack[2].ReceiveMaximum >= 1 and app.connack[2].MaximumPacketSize == 1 << 20
        app.subscribe("outbox/v5/status/#")
        good = app.publish("outbox/v5/email.send", email("v5-good"))
        bad = app.publish("outbox/v5/email.send", {"id": "v5-bad", "to": "not an address"})
        wait_until(lambda: {good, bad} <= app.acks.keys(), what="PUBACKs")
        assert app.acks[good] == (0, "")
        code, why = app.acks[bad]
        assert code == 0x99 and why.startswith("schema_violation: ")
        wait_until(lambda: "v5-good" in app.ids_with("accepted"), what="the accepted status")
        _status, props = next(x for x in app.statuses if x[0]["id"] == "v5-good")
        assert props.ContentType == "application/json" and props.PayloadFormatIndicator == 1
    finally:
        app.close()
    assert " ERROR " not in outbox.log()


def test_a_client_that_asks_for_no_problem_information_gets_no_reason_string(outbox: OutboxProcess) -> None:
    """A PUBACK of a rejected intent carried its reason string whatever the client asked: one that set request
    problem information 0 must take that as a protocol error [MQTT-3.1.2-29], leave, and send the intent again on
    its next connection. Now it gets the reason code alone."""
    with socket.create_connection(("127.0.0.1", outbox.port), timeout=10) as sock:
        sock.sendall(bytes(mqtt5.ConnectPacket("v5-quiet", request_problem_info=False).write()))
        connack, _size = mqtt5.read(memoryview(sock.recv(1024)))
        assert isinstance(connack, mqtt5.ConnAckPacket) and connack.reason_code == 0, connack
        bad = json.dumps({"id": "v5-quiet", "to": "not an address"}).encode()
        sock.sendall(bytes(mqtt5.PublishPacket("outbox/v5/email.send", bad, qos=mqtt5.QoS(1), packet_id=7).write()))
        puback, _size = mqtt5.read(memoryview(sock.recv(1024)))
    assert isinstance(puback, mqtt5.PubAckPacket) and puback.packet_id == 7
    assert (int(puback.reason_code), puback.reason_str) == (0x99, None)


def test_a_publish_the_app_may_not_make_is_acknowledged_as_not_authorized(tmp_path: Path) -> None:
    """With app logins, a publish outside the app's topics (another app's replay topic, any other topic) and one on a
    status topic were dropped and acknowledged with success: the app was told its message was taken. Now MQTT 5's
    PUBACK says 0x87 and why, and the log names the topic."""
    users = tmp_path / "users"
    users.write_text(f"appa:{hash_password('pa')}\n")
    with OutboxProcess(tmp_path / "data", free_port(), "--users", str(users)) as outbox:
        sock = socket.create_connection(("127.0.0.1", outbox.port), timeout=10)
        with sock:
            sock.sendall(bytes(mqtt5.ConnectPacket("appa-1", username="appa", password=b"pa").write()))
            (connack,) = _read5(sock, 1)
            assert isinstance(connack, mqtt5.ConnAckPacket) and connack.reason_code == 0, connack
            topics = ["elsewhere/x", "outbox/appb/replay", "outbox/appa/status/a-1"]
            for packet_id, topic in enumerate(topics, 1):
                publish = mqtt5.PublishPacket(topic, b'{"after": 0}', qos=mqtt5.QoS(1), packet_id=packet_id)
                sock.sendall(bytes(publish.write()))
            answers = [(a.packet_id, int(a.reason_code), a.reason_str) for a in _read5(sock, len(topics))]
    assert answers == [
        (1, 0x87, "app 'appa' may publish only under outbox/appa/"),
        (2, 0x87, "app 'appa' may publish only under outbox/appa/"),
        (3, 0x87, "only the outbox publishes on status topics"),
    ]
    assert "may not publish to 'elsewhere/x'" in outbox.log()


def _read5(sock: socket.socket, count: int) -> list[Any]:
    """The next `count` MQTT 5 packets from `sock`."""
    data, packets = b"", []
    while len(packets) < count:
        data += sock.recv(65536)
        while data:
            try:
                packet, size = mqtt5.read(memoryview(data))
            except IndexError:  # mqtt5: not a whole packet yet
                break
            packets.append(packet)
            data = data[size:]
    return packets


def test_a_shared_subscription_is_refused_not_granted_for_nothing(outbox: OutboxProcess) -> None:
    """CONNACK says shared subscriptions are not available, yet one was granted, as a filter that begins with the
    level `$share` and so matches no topic anyone publishes: the app's workers waited for jobs that never came.
    Now it is refused, 0x9E (3.1.1: 0x80), and the other filters of the SUBSCRIBE are granted."""
    with socket.create_connection(("127.0.0.1", outbox.port), timeout=10) as sock:
        sock.sendall(bytes(mqtt5.ConnectPacket("v5-worker").write()))
        (connack,) = _read5(sock, 1)
        assert connack.shared_subscription_available is False
        filters = [mqtt5.TopicFilter(f, max_qos=mqtt5.QoS(1)) for f in ("$share/workers/jobs/#", "jobs/#")]
        sock.sendall(bytes(mqtt5.SubscribePacket(1, filters).write()))
        (suback,) = _read5(sock, 1)
    assert [int(code) for code in suback.reason_codes] == [0x9E, 1]
    legacy = RawClient(outbox.port)
    try:
        legacy.connect("v311-worker")
        assert legacy.subscribe("$share/workers/jobs/#", 1) == (0x80,)
    finally:
        legacy.close()


def test_a_qos2_intent_refused_in_its_pubrec_frees_its_packet_id_for_the_next(outbox: OutboxProcess) -> None:
    """A PUBREC of reason code 0x80 or more ends a QoS 2 exchange: the client sends no PUBREL and uses the packet id
    again [MQTT-4.3.3]. The outbox kept the id as taken, so the next intent under it was taken for a resend of the
    refused one: answered with the old refusal and never stored. Lost, for a clean and a persistent session alike."""
    for client_id, expiry in (("q2-clean", 0), ("q2-kept", 3600)):
        with socket.create_connection(("127.0.0.1", outbox.port), timeout=10) as sock:
            sock.sendall(bytes(mqtt5.ConnectPacket(client_id, session_expiry_interval=expiry).write()))
            _read5(sock, 1)
            answers = []
            for intent in ({"id": f"{client_id}-bad", "to": "x"}, email(f"{client_id}-good")):
                body = json.dumps(intent).encode()
                sock.sendall(
                    bytes(mqtt5.PublishPacket("outbox/q2/email.send", body, qos=mqtt5.QoS(2), packet_id=5).write())
                )
                (pubrec,) = _read5(sock, 1)
                answers.append(int(pubrec.reason_code))
            sock.sendall(bytes(mqtt5.PubRelPacket(5).write()))
            (pubcomp,) = _read5(sock, 1)
        assert answers == [0x99, 0] and isinstance(pubcomp, mqtt5.PubCompPacket)
        stored = stored_ids(outbox.data_dir)
        assert (stored[f"{client_id}-bad"], stored.get(f"{client_id}-good")) == ("rejected", "accepted")
    conn = sqlite3.connect(outbox.data_dir / "outbox.db")
    try:  # and the persistent session's ids are not kept taken in the database
        assert conn.execute("SELECT client_id, packet_id FROM qos2_taken").fetchall() == []
    finally:
        conn.close()


def test_nothing_over_the_clients_maximum_packet_size_is_sent_to_it(outbox: OutboxProcess) -> None:
    """A client's maximum packet size was ignored: a status too large for it (a rejection's detail) was sent
    anyway, which such a client takes as a protocol error [MQTT-3.1.2-24] and disconnects, to be sent it again
    on its next connection. Now such a message is dropped as if delivered [MQTT-3.1.2-25], and what follows
    comes."""
    app = App5(outbox.port, "v5-small", session_expiry=3600, max_packet=300)
    try:
        app.subscribe("outbox/v5/status/#")
        long_bad = app.publish("outbox/v5/email.send", {"id": "v5-long", "to": "x" * 150, "subject": "s", "text": "t"})
        good = app.publish("outbox/v5/email.send", email("v5-short"))
        wait_until(lambda: {long_bad, good} <= app.acks.keys(), what="PUBACKs")
        assert app.acks[long_bad][0] == 0x99
        wait_until(lambda: "v5-short" in app.ids_with("accepted"), what="the small status")
        assert [s["id"] for s, _p in app.statuses] == ["v5-short"]
    finally:
        app.close()
    tiny = App5(outbox.port, "v5-tiny", max_packet=100)
    try:  # a PUBACK's reason string is left out rather than go past the maximum; its reason code stays
        bad = tiny.publish("outbox/v5/email.send", {"id": "v5-tiny", "to": "x" * 150, "subject": "s", "text": "t"})
        wait_until(lambda: bad in tiny.acks, what="PUBACK")
        assert tiny.acks[bad] == (0x99, "")
    finally:
        tiny.close()
    assert "v5-small" in outbox.log() and "maximum packet size" in outbox.log()


def test_a_session_expiry_keeps_the_session_through_a_sigkill(outbox: OutboxProcess) -> None:
    listener = App5(outbox.port, "v5-listener", session_expiry=3600)
    listener.subscribe("outbox/v5/status/#")
    publisher = App5(outbox.port, "v5-publisher")
    publisher.publish("outbox/v5/email.send", email("v5-kept"))
    wait_until(lambda: "v5-kept" in listener.ids_with("accepted"), what="accepted")
    publisher.close()
    outbox.kill()
    outbox.start()
    # paho reconnects with clean_start=False; the outbox still has the session and says so.
    wait_until(lambda: listener.connack is not None and listener.connack[0], what="session present after restart")
    ok = App5(outbox.port, "v5-publisher-2")
    ok.publish("outbox/v5/email.send", email("v5-after"))
    wait_until(lambda: "v5-after" in listener.ids_with("accepted"), what="statuses keep coming to the old session")
    ok.close()
    listener.close()


def test_message_expiry_becomes_the_intents_deadline(outbox: OutboxProcess) -> None:
    app = App5(outbox.port, "v5-expiry")
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = 120
    mid = app.publish("outbox/v5/email.send", email("v5-expiring"), props)
    wait_until(lambda: mid in app.acks, what="PUBACK")
    app.close()
    conn = sqlite3.connect(outbox.data_dir / "outbox.db")
    try:
        created, expires = conn.execute("SELECT created, expires FROM intents WHERE id = 'v5-expiring'").fetchone()
    finally:
        conn.close()
    assert expires - created == 120_000


def _expiring(seconds: int) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.MessageExpiryInterval = seconds
    return props


def _retained_on(port: int, topic_filter: str, marker_topic: str) -> list[str]:
    """The topics of the retained messages a new subscriber to `topic_filter` gets: those before a marker published
    after its SUBACK (sent in order)."""
    client = RawClient(port)
    try:
        client.connect("retained-probe")
        client.subscribe(topic_filter, 0)
        client.publish(marker_topic, b"{}", 0)
        topics: list[str] = []
        while (message := client.messages(1)[0]).topic != marker_topic:
            topics.append(message.topic)
        return topics
    finally:
        client.close()


def test_a_message_expiry_deletes_retained_and_queued_messages_and_is_passed_on(outbox: OutboxProcess) -> None:
    """The message expiry interval of an ordinary message was dropped: a retained message and one queued for an
    absent session outlived it for ever, and the subscriber was not told what was left of it [MQTT-3.3.2-5/6]."""
    away = App5(outbox.port, "v5-away", session_expiry=3600)
    away.subscribe("q/#")
    away.close()
    publisher = App5(outbox.port, "v5-sender")
    try:
        sent = [
            publisher.client.publish("r/short", b'{"m": "r-short"}', qos=1, retain=True, properties=_expiring(1)),
            publisher.client.publish("r/long", b'{"m": "r-long"}', qos=1, retain=True, properties=_expiring(3600)),
            publisher.client.publish("q/short", b'{"m": "q-short"}', qos=1, properties=_expiring(1)),
            publisher.client.publish("q/long", b'{"m": "q-long"}', qos=1, properties=_expiring(3600)),
        ]
        wait_until(lambda: {m.mid for m in sent} <= publisher.acks.keys(), what="PUBACKs")
        # Past the short expiry: the retained message is gone, the long-lived one is still there.
        wait_until(lambda: _retained_on(outbox.port, "r/#", "r/marker") == ["r/long"], what="r/short to expire")
        back = App5(outbox.port, "v5-away", session_expiry=3600)
        try:
            publisher.client.publish("q/marker", b'{"m": "marker"}', qos=1)
            wait_until(lambda: any(m == {"m": "marker"} for m, _p in back.statuses), what="the marker")
            assert [m["m"] for m, _p in back.statuses] == ["q-long", "marker"]
            left = back.statuses[0][1].MessageExpiryInterval
            assert 3500 < left <= 3600
            assert not hasattr(back.statuses[1][1], "MessageExpiryInterval")
        finally:
            back.close()
    finally:
        publisher.close()


def test_a_publishs_properties_reach_its_subscribers_as_a_broker_passes_them_on(outbox: OutboxProcess) -> None:
    """MQTT 5 request/response between local apps: the response topic, correlation data, user properties, content
    type and payload format of a PUBLISH were dropped on the way [MQTT-3.3.2-4/15/16/17/20], so the responder never
    knew where to answer; on a retained message too."""
    responder = App5(outbox.port, "v5-responder")
    requester = App5(outbox.port, "v5-requester")
    try:
        responder.subscribe("req/#")
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "resp/v5-requester"
        props.CorrelationData = b"call-1"
        props.UserProperty = [("trace", "t-1"), ("trace", "t-2")]
        props.ContentType = "application/json"
        props.PayloadFormatIndicator = 1
        requester.client.publish("req/time", b'{"q": "now"}', qos=1, properties=props)
        requester.client.publish("req/kept", b'{"q": "kept"}', qos=1, retain=True, properties=props)
        wait_until(lambda: len(responder.statuses) == 2, what="the requests")
        late = App5(outbox.port, "v5-late")
        try:
            late.subscribe("req/kept")
            wait_until(lambda: late.statuses, what="the retained request")
            got = [p for _m, p in responder.statuses] + [late.statuses[0][1]]
        finally:
            late.close()
        for received in got:
            assert received.ResponseTopic == "resp/v5-requester"
            assert received.CorrelationData == b"call-1"
            assert received.UserProperty == [("trace", "t-1"), ("trace", "t-2")]
            assert (received.ContentType, received.PayloadFormatIndicator) == ("application/json", 1)
    finally:
        requester.close()
        responder.close()


class Subscriber5:
    """A paho MQTT 5 client that records (topic, payload, retain) of what it receives, and subscribes with options."""

    def __init__(self, port: int, client_id: str) -> None:
        self.got: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        connected = threading.Event()
        self.client.on_connect = lambda *_args: connected.set()
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert connected.wait(10), "no CONNACK"

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.got.append((message.topic, message.payload, bool(message.retain)))

    def subscribe(self, topic_filter: str, **options: Any) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_args: done.set()
        self.client.subscribe(topic_filter, options=SubscribeOptions(qos=1, **options))
        assert done.wait(10), "no SUBACK"

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def until(self, topic: str) -> list[tuple[str, bytes, bool]]:
        """What it got until a message on `topic` (which comes last), that one included."""
        wait_until(lambda: any(t == topic for t, _p, _r in self.got), what=f"a message on {topic}")
        with self._lock:
            return list(self.got)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        release_paho(self.client)


def test_no_local_retain_handling_and_retain_as_published_are_kept_to(outbox: OutboxProcess) -> None:
    """The options of an MQTT 5 subscription were ignored: an app subscribed with no local got its own messages
    back, one with retain handling 2 got the retained messages anyway (1: at every SUBSCRIBE again), and retain as
    published never kept a message's RETAIN flag."""
    app, other = Subscriber5(outbox.port, "v5-opts"), Subscriber5(outbox.port, "v5-other")
    try:
        other.publish("cfg/x", b"retained", retain=True)
        app.subscribe("chat/#", noLocal=True)
        app.publish("chat/mine", b"own")
        other.publish("chat/theirs", b"theirs")
        assert app.until("chat/theirs") == [("chat/theirs", b"theirs", False)]
        app.subscribe("cfg/#", retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        app.subscribe("cfg/+", retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        app.subscribe("cfg/+", retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)  # held already: not again
        app.subscribe("rap/#", retainAsPublished=True)
        other.publish("rap/live", b"kept flag", retain=True)
        got = app.until("rap/live")[1:]
        assert got == [("cfg/x", b"retained", True), ("rap/live", b"kept flag", True)]
    finally:
        app.close()
        other.close()


def test_a_string_that_is_not_utf8_closes_the_client_as_malformed_and_others_go_on(outbox: OutboxProcess) -> None:
    """The `mqtt5` codec panics on such a string (a BaseException): it went past every handler and the
    connection ended in asyncio's "Unhandled exception", without MQTT 5's DISCONNECT."""
    publish = bytes(mqtt5.PublishPacket("outbox/v5/ZZ", b"{}", qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=1).write())
    with socket.create_connection(("127.0.0.1", outbox.port), timeout=10) as sock:
        sock.sendall(bytes(mqtt5.ConnectPacket("v5-not-utf8").write()))
        connack, _size = mqtt5.read(memoryview(sock.recv(1024)))
        assert isinstance(connack, mqtt5.ConnAckPacket)
        sock.sendall(publish.replace(b"ZZ", b"\xff\xfe"))
        answer = b""
        while chunk := sock.recv(1024):
            answer += chunk
    assert answer, "the connection was closed without MQTT 5's DISCONNECT"
    disconnect, _size = mqtt5.read(memoryview(answer))
    assert isinstance(disconnect, mqtt5.DisconnectPacket)
    assert disconnect.reason_code == mqtt5.DisconnectReasonCode.MALFORMED_PACKET
    app = App5(outbox.port, "v5-after")
    try:
        mid = app.publish("outbox/v5/email.send", email("v5-after-bad"))
        wait_until(lambda: mid in app.acks, what="PUBACK")
        assert app.acks[mid] == (0, "")
    finally:
        app.close()
    log = outbox.log()
    assert "closing client v5-not-utf8" in log and "not UTF-8" in log, log
    assert "Unhandled exception" not in log, log


_BAD = b"\xff\xfe"  # what each "ZZ" below becomes: not UTF-8
_CONNECTS_NOT_UTF8 = {
    "client id": mqtt5.ConnectPacket("v5-ZZ"),
    "user property value": mqtt5.ConnectPacket("v5-prop", user_properties=[("k", "ZZ")]),
    "will topic": mqtt5.ConnectPacket("v5-will", will=mqtt5.Will("w/ZZ", payload=b"x")),
}
_PACKETS_NOT_UTF8 = {
    "topic": mqtt5.PublishPacket("outbox/v5/ZZ", b"{}", qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=1),
    "content type": mqtt5.PublishPacket("outbox/v5/email.send", b"{}", qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=2,
                                        content_type="ZZ"),
    "user property name": mqtt5.PublishPacket("outbox/v5/email.send", b"{}", user_properties=[("ZZ", "v")]),
    "topic filter": mqtt5.SubscribePacket(3, [mqtt5.TopicFilter("outbox/ZZ/status/#")]),
    "reason string": mqtt5.PubAckPacket(4, reason_str="ZZ"),
}  # fmt: skip


def test_a_string_that_is_not_utf8_in_any_field_writes_no_traceback_into_the_log(outbox: OutboxProcess) -> None:
    """`mqtt5` (0.8.0) hands such a string's bytes to Python, and pyo3 printed the decode error's traceback and
    Rust's panic message (nine lines) to the outbox's stderr for each such packet, past the log's format:
    a fuzzed run of 600 connections wrote 43 of them. Now the outbox checks the strings before the codec."""
    for what, connect in _CONNECTS_NOT_UTF8.items():
        with socket.create_connection(("127.0.0.1", outbox.port), timeout=10) as sock:
            sock.sendall(bytes(connect.write()).replace(b"ZZ", _BAD))
            refused = _answer_until_closed(sock)
        assert isinstance(refused, mqtt5.ConnAckPacket), (what, refused)
        assert refused.reason_code == mqtt5.ConnAckReasonCode.MALFORMED_PACKET, what
    for index, (what, packet) in enumerate(_PACKETS_NOT_UTF8.items()):
        with socket.create_connection(("127.0.0.1", outbox.port), timeout=10) as sock:
            sock.sendall(bytes(mqtt5.ConnectPacket(f"v5-bad-{index}").write()))
            connack, _size = mqtt5.read(memoryview(sock.recv(1024)))
            assert isinstance(connack, mqtt5.ConnAckPacket)
            sock.sendall(bytes(packet.write()).replace(b"ZZ", _BAD))
            disconnect = _answer_until_closed(sock)
        assert isinstance(disconnect, mqtt5.DisconnectPacket), (what, disconnect)
        assert disconnect.reason_code == mqtt5.DisconnectReasonCode.MALFORMED_PACKET, what
    log = outbox.log()  # refusals are logged a line at most every few seconds: the first one, then counted
    assert "Traceback" not in log and "panicked" not in log, log
    assert "malformed MQTT 5 packet: its client id is not UTF-8" in log, log


def _answer_until_closed(sock: socket.socket) -> Any:
    answer = b""
    while chunk := sock.recv(1024):
        answer += chunk
    assert answer, "the connection was closed without a word"
    packet, _size = mqtt5.read(memoryview(answer))
    return packet


def test_u0000_in_a_topic_or_a_client_id_is_malformed_as_in_311(outbox: OutboxProcess) -> None:
    """`mqtt5` reads U+0000 in a string where our 3.1.1 codec refuses it [MQTT-1.5.4-2]: a NUL in an intake
    topic's app was stored, published in a status topic and written raw into the log."""
    topic = "outbox/a\x00b/email.send"
    publish = mqtt5.PublishPacket(topic, json.dumps(email("v5-nul")).encode(), qos=mqtt5.QoS(1), packet_id=7)
    with socket.create_connection(("127.0.0.1", outbox.port), timeout=10) as sock:
        sock.sendall(bytes(mqtt5.ConnectPacket("v5-nul-topic").write()))
        connack, _size = mqtt5.read(memoryview(sock.recv(1024)))
        assert isinstance(connack, mqtt5.ConnAckPacket)
        sock.sendall(bytes(publish.write()))
        disconnect = _answer_until_closed(sock)
    assert isinstance(disconnect, mqtt5.DisconnectPacket), disconnect
    assert disconnect.reason_code == mqtt5.DisconnectReasonCode.MALFORMED_PACKET
    with socket.create_connection(("127.0.0.1", outbox.port), timeout=10) as sock:
        sock.sendall(bytes(mqtt5.ConnectPacket("v5\x00nul").write()))
        refused = _answer_until_closed(sock)  # a CONNACK that says why: no DISCONNECT before a CONNACK
    assert isinstance(refused, mqtt5.ConnAckPacket), refused
    assert refused.reason_code == mqtt5.ConnAckReasonCode.MALFORMED_PACKET
    assert "v5-nul" not in stored_ids(outbox.data_dir)
    log = outbox.log()
    assert "string contains U+0000" in log
    assert "\x00" not in log


def test_the_clients_session_expiry_is_honoured_up_to_the_outboxs(tmp_path: Path) -> None:
    with OutboxProcess(tmp_path / "data", free_port(), "--session-expiry", "1h") as outbox:
        greedy = App5(outbox.port, "v5-greedy", session_expiry=7200)
        brief = App5(outbox.port, "v5-brief", session_expiry=1)
        try:
            # Asked for more than the outbox keeps: CONNACK says what it gets [MQTT-3.2.2-3.2]
            assert greedy.connack[2].SessionExpiryInterval == 3600
            assert not hasattr(brief.connack[2], "SessionExpiryInterval")  # what it asked for stands
            brief.subscribe("outbox/v5/status/#")
        finally:
            brief.close()
            greedy.close()
        # Before, any interval above 0 kept the session for the outbox's --session-expiry (here an hour).
        wait_until(lambda: "v5-brief" not in stored_sessions(outbox.data_dir), 15, what="the 1 s session gone")
        assert "v5-greedy" in stored_sessions(outbox.data_dir)
        again = App5(outbox.port, "v5-brief", session_expiry=1)
        try:
            assert again.connack[0] is False
        finally:
            again.close()


def _connect5(port: int, client_id: str, session_expiry: int) -> tuple[socket.socket, Any]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    connect = mqtt5.ConnectPacket(client_id, clean_start=False, session_expiry_interval=session_expiry)
    sock.sendall(bytes(connect.write()))
    connack, _size = mqtt5.read(memoryview(sock.recv(1024)))
    assert isinstance(connack, mqtt5.ConnAckPacket) and connack.reason_code == 0, connack
    return sock, connack


def _leave5(port: int, client_id: str, *, connect_expiry: int, leave_expiry: int | None) -> Any:
    """Connect, then DISCONNECT setting `leave_expiry`; what the outbox answered before closing, if anything."""
    sock, _connack = _connect5(port, client_id, connect_expiry)
    with sock:
        disconnect = mqtt5.DisconnectPacket(session_expiry_interval=leave_expiry)
        sock.sendall(bytes(disconnect.write()))
        answer = b""
        while chunk := sock.recv(1024):
            answer += chunk
    return mqtt5.read(memoryview(answer))[0] if answer else None


def test_a_disconnect_sets_the_sessions_expiry_anew(outbox: OutboxProcess) -> None:
    """MQTT 5 [MQTT-3.14.2.2.2]: a DISCONNECT's session expiry interval replaces the CONNECT's. Before, it was
    ignored: a client that left with 0 ("forget me") had its session kept for the CONNECT's interval."""
    port = outbox.port
    assert _leave5(port, "v5-keep", connect_expiry=3600, leave_expiry=None) is None
    assert _leave5(port, "v5-forget", connect_expiry=3600, leave_expiry=0) is None
    assert _leave5(port, "v5-shorten", connect_expiry=3600, leave_expiry=1) is None
    wait_until(lambda: "v5-forget" not in stored_sessions(outbox.data_dir), what="the session left with 0 gone")
    wait_until(lambda: "v5-shorten" not in stored_sessions(outbox.data_dir), 15, what="the 1 s session expired")
    assert "v5-keep" in stored_sessions(outbox.data_dir)
    for client_id, present in (("v5-keep", True), ("v5-forget", False), ("v5-shorten", False)):
        sock, connack = _connect5(port, client_id, 3600)
        sock.close()
        assert connack.session_present is present, client_id


def test_a_disconnect_cannot_keep_a_session_its_connect_did_not(outbox: OutboxProcess) -> None:
    """[MQTT-3.14.2-2]: a non-zero interval in the DISCONNECT after a CONNECT with 0 is a protocol error."""
    answer = _leave5(outbox.port, "v5-late-keep", connect_expiry=0, leave_expiry=60)
    assert isinstance(answer, mqtt5.DisconnectPacket), answer
    assert answer.reason_code == mqtt5.DisconnectReasonCode.PROTOCOL_ERROR
    assert "v5-late-keep" not in stored_sessions(outbox.data_dir)


def test_a_resumed_session_takes_the_receive_maximum_of_its_new_connection(outbox: OutboxProcess) -> None:
    """A session kept the Receive Maximum of the connection that last gave one: resumed by a 3.1.1 client
    (which has none) or an MQTT 5 client that left it at its default, it was sent one message at a time."""
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = 1
    first = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="v5-window", protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    first.on_subscribe = lambda *_args: subscribed.set()
    first.connect("127.0.0.1", outbox.port, keepalive=30, clean_start=False, properties=props)
    first.loop_start()
    first.subscribe("outbox/v5/status/#", qos=1)
    assert subscribed.wait(10), "no SUBACK"
    first.disconnect()
    first.loop_stop()
    release_paho(first)
    publisher = App5(outbox.port, "v5-window-publisher")
    try:
        mids = [publisher.publish("outbox/v5/email.send", email(f"v5-w{i}")) for i in range(3)]
        wait_until(lambda: set(mids) <= publisher.acks.keys(), what="PUBACKs")
    finally:
        publisher.close()
    resumed = RawClient(outbox.port)
    try:
        assert resumed.connect("v5-window", clean=False).session_present
        statuses = resumed.messages(3)  # none acknowledged: each went out within the new window
        assert sorted(json.loads(m.payload)["id"] for m in statuses) == ["v5-w0", "v5-w1", "v5-w2"]
    finally:
        resumed.close()
