"""The UTF-8 check of MQTT 5 strings made before the `mqtt5` codec (edge_outbox/mqtt/v5_strings.py)."""

from __future__ import annotations

import contextlib

import mqtt5
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_outbox.mqtt.v5_strings import check_strings
from intent_contract.errors import MalformedPacketError
from intent_contract.mqtt_packets import whole

_PACKETS = {
    "client id": mqtt5.ConnectPacket("ZZ", username="u", password=b"\xff", keep_alive=30, session_expiry_interval=9,
                                     will=mqtt5.Will("w/t", payload=b"\xff", user_properties=[("a", "b")])),
    "will topic": mqtt5.ConnectPacket("c", will=mqtt5.Will("w/ZZ", payload=b"x", content_type="t")),
    "user name": mqtt5.ConnectPacket("c", username="ZZ", authentication_method="m", authentication_data=b"\xff"),
    "topic": mqtt5.PublishPacket("a/ZZ", b"\xff\xfe", qos=mqtt5.QoS.EXACTLY_ONCE, packet_id=9,
                                 message_expiry_interval=5, correlation_data=b"\xff", subscription_ids=[300]),
    "response topic": mqtt5.PublishPacket("a/b", b"", response_topic="r/ZZ", payload_format_indicator=1),
    "user property value": mqtt5.PublishPacket("a/b", b"", user_properties=[("k", "v"), ("k2", "ZZ")]),
    "reason string": mqtt5.PubRecPacket(5, reason_str="ZZ"),
    "topic filter": mqtt5.SubscribePacket(6, [mqtt5.TopicFilter("a/b"), mqtt5.TopicFilter("c/ZZ")],
                                          subscription_id=7),
    "authentication method": mqtt5.AuthPacket(reason_code=mqtt5.AuthReasonCode.CONTINUE_AUTHENTICATION,
                                              authentication_method="ZZ"),
}  # fmt: skip
_MORE = [
    mqtt5.UnsubscribePacket(8, ["a/#", "b/+"], user_properties=[("x", "y")]),
    mqtt5.DisconnectPacket(session_expiry_interval=3, reason_str="bye", server_reference="s"),
    mqtt5.PubAckPacket(1), mqtt5.PubRelPacket(2), mqtt5.PubCompPacket(3), mqtt5.PingReqPacket(),
]  # fmt: skip


def _split(packet: bytes) -> tuple[int, bytes]:
    index = 1
    while packet[index] & 0x80:
        index += 1
    return packet[0], packet[index + 1 :]


@pytest.mark.parametrize("what", list(_PACKETS))
def test_each_string_field_is_named_when_it_is_not_utf8(what: str) -> None:
    packet = bytes(_PACKETS[what].write())
    check_strings(*_split(packet))  # as written: binary fields that are not UTF-8 are no strings
    with pytest.raises(MalformedPacketError, match=f"its {what} is not UTF-8"):
        check_strings(*_split(packet.replace(b"ZZ", b"\xff\xfe")))


@pytest.mark.parametrize("packet", _MORE, ids=lambda p: type(p).__name__)
def test_packets_without_strings_or_with_good_ones_pass(packet: object) -> None:
    check_strings(*_split(bytes(packet.write())))  # type: ignore[attr-defined]


@given(st.sampled_from(list(_PACKETS.values())), st.integers(0, 2000), st.binary(max_size=8))
def test_a_damaged_packet_is_refused_by_us_or_read_by_the_codec_without_a_panic(
    packet: object, where: int, junk: bytes
) -> None:
    """Whatever a packet's bytes, the codec never meets a string that is not UTF-8 (it would panic)."""
    data = bytes(packet.write()).replace(b"ZZ", b"ok")  # type: ignore[attr-defined]
    first, body = _split(data)
    where %= len(body) + 1
    body = body[:where] + junk + body[where + len(junk) :]
    try:
        check_strings(first, body)
    except MalformedPacketError:
        return
    with contextlib.suppress(ValueError, IndexError):  # a panic is a BaseException: it fails the test
        mqtt5.read(memoryview(whole(first, body)))
