"""The endpoint's MQTT 5 dialect on packets the `mqtt5` codec cannot read: each is refused as malformed.

`mqtt5` (0.8.0) panics on a string that is not UTF-8 in any field; the panic is a BaseException that went
past the endpoint's handlers. Every such packet must come out as a MalformedPacketError.
"""

from __future__ import annotations

import mqtt5
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_outbox.mqtt.dialect import V5, V311, Verdict
from intent_contract import mqtt_packets as p
from intent_contract.errors import MalformedPacketError

# On the way to its panic `mqtt5` hands Python the UnicodeDecodeError it met as an unraisable exception
# (printed to stderr): the library's own output, which the endpoint cannot stop (docs/edge-endpoint.md).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

# Each with the text "ZZ" in one string field, where a test puts bytes that are not UTF-8.
WITH_A_STRING = {
    "publish topic": mqtt5.PublishPacket("outbox/app/ZZ", b"{}", qos=mqtt5.QoS.AT_LEAST_ONCE, packet_id=3),
    "publish property": mqtt5.PublishPacket("a/b", b"{}", content_type="ZZ"),
    "connect client id": mqtt5.ConnectPacket("ZZ"),
    "connect user name": mqtt5.ConnectPacket("c", username="ZZ", password=b"pw"),
    "will topic": mqtt5.ConnectPacket("c", will=mqtt5.Will("w/ZZ", payload=b"x")),
    "subscribe filter": mqtt5.SubscribePacket(5, [mqtt5.TopicFilter("outbox/ZZ/#", max_qos=mqtt5.QoS.AT_LEAST_ONCE)]),
    "unsubscribe filter": mqtt5.UnsubscribePacket(6, ["a/ZZ"]),
    "disconnect reason": mqtt5.DisconnectPacket(reason_str="ZZ"),
    "puback reason": mqtt5.PubAckPacket(3, reason_str="ZZ"),
}


def _frame(raw: bytes) -> tuple[int, bytes]:
    ((first, body),) = p.Framer(1 << 20).feed(raw)
    return first, body


@pytest.mark.parametrize("where", sorted(WITH_A_STRING))
def test_a_string_that_is_not_utf8_is_malformed(where: str) -> None:
    raw = bytes(WITH_A_STRING[where].write())
    assert raw.count(b"ZZ") == 1
    first, body = _frame(raw.replace(b"ZZ", b"\xff\xfe"))
    with pytest.raises(MalformedPacketError, match="not UTF-8"):
        V5(100, 1 << 20).decode(first, body)
    # The same packet as written decodes: the bytes are the fault, not the packet.
    V5(100, 1 << 20).decode(*_frame(raw))


@given(st.sampled_from(sorted(WITH_A_STRING)), st.data())
def test_a_packet_with_any_byte_changed_is_read_or_refused_as_malformed(where: str, data: st.DataObject) -> None:
    first, body = _frame(bytes(WITH_A_STRING[where].write()))
    at = data.draw(st.integers(0, len(body) - 1))
    changed = body[:at] + bytes([data.draw(st.integers(0, 255))]) + body[at + 1 :]
    try:
        packet = V5(100, 1 << 20).decode(first, changed)
    except MalformedPacketError:
        return
    assert isinstance(packet, p.Packet)


def test_a_reason_string_with_a_control_character_goes_out_written_out() -> None:
    # MQTT 5 strings must not hold U+0000; a refusal's reason can quote what the app sent.
    raw = V5(100, 1 << 20).ack(p.Type.PUBACK, 7, Verdict(0x99, "schema_violation: 'x\x00y' was unexpected"))
    puback, _size = mqtt5.read(memoryview(raw))
    assert isinstance(puback, mqtt5.PubAckPacket)
    assert puback.reason_str == "schema_violation: 'x\\u0000y' was unexpected"


WITH_U0000 = ["publish topic", "connect client id", "connect user name", "will topic", "subscribe filter",
              "unsubscribe filter"]  # fmt: skip


@pytest.mark.parametrize("where", WITH_U0000)
def test_u0000_in_a_topic_client_id_or_user_name_is_malformed(where: str) -> None:
    """As in 3.1.1 [MQTT-1.5.4-2]; `mqtt5` lets it through, and a NUL in a topic reached the store and the log."""
    raw = bytes(WITH_A_STRING[where].write())
    with pytest.raises(MalformedPacketError, match="U\\+0000"):
        V5(100, 1 << 20).decode(*_frame(raw.replace(b"ZZ", b"Z\x00")))


@pytest.mark.parametrize("reason", [0x81, 0x87, 0x8B, 0x8D, 0x8E])
def test_a_connect_is_refused_with_a_connack_whatever_the_reason(reason: int) -> None:
    """No DISCONNECT before a CONNACK [MQTT-3.14.0-1]; a reason a CONNACK cannot carry (shutting down,
    a keepalive timeout, taken over) goes out as "unspecified error" instead of failing in the codec."""
    sent, _ = mqtt5.read(memoryview(V5(16, 1 << 20).refuse_connect(reason)))
    assert isinstance(sent, mqtt5.ConnAckPacket)
    assert int(sent.reason_code) == (reason if reason in (0x81, 0x87) else 0x80)


def test_a_refused_filter_is_named_in_mqtt5_and_a_failure_in_311() -> None:
    """A filter past the session's bound is 0x97 quota exceeded, one too long 0x8F invalid (MQTT 5); 3.1.1 has
    one failure code for every refusal."""
    codes = [1, 0x97, 0x8F, 0x87]
    packet, _size = mqtt5.read(memoryview(V5(256, 1 << 20).suback(7, codes)))
    assert isinstance(packet, mqtt5.SubAckPacket)
    assert [int(c) for c in packet.reason_codes] == codes
    assert p.decode(*_frame(V311().suback(7, codes))) == p.Suback(7, (1, 0x80, 0x80, 0x80))
