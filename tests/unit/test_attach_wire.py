"""Attach mode's MQTT 5 wire (edge_outbox.attach_wire) on packets the `mqtt5` codec writes, without a broker."""

import mqtt5
import pytest

from edge_outbox.attach_wire import V5, Refused
from edge_outbox.errors import AttachVersionError
from intent_contract import mqtt_packets as p
from intent_contract.mqtt_packets import Type


def read(wire: V5, packet: bytes) -> p.Packet | Refused:
    ((first, body),) = p.Framer(1 << 20).feed(packet)
    return wire.decode(first, body)


def test_a_publish_with_or_without_properties_is_read_alike() -> None:
    wire = V5()
    for qos in (0, 1):
        packet_id = 9 if qos else None
        for expiry in (None, 120):
            packet = mqtt5.PublishPacket("outbox/a/email.send", b'{"x": 1}', qos=mqtt5.QoS(qos),
                                         packet_id=packet_id, message_expiry_interval=expiry)  # fmt: skip
            assert read(wire, packet.write()) == p.Publish("outbox/a/email.send", b'{"x": 1}', qos, False, False,
                                                            packet_id, expiry)  # fmt: skip
    empty = mqtt5.PublishPacket("outbox/a/email.send", b"", qos=mqtt5.QoS(1), packet_id=3).write()
    assert read(wire, empty) == p.Publish("outbox/a/email.send", b"", 1, False, False, 3)


def test_the_brokers_connack_sets_the_window_and_keepalive_and_a_311_refusal_is_told_apart() -> None:
    wire = V5()
    connack = mqtt5.ConnAckPacket(session_present=True, receive_max=20, server_keep_alive=10).write()
    assert read(wire, connack) == p.Connack(True, 0)
    assert (wire.receive_max, wire.server_keepalive) == (20, 10)
    with pytest.raises(AttachVersionError):
        read(V5(), p.encode(p.Connack(False, p.ConnackCode.BAD_PROTOCOL_VERSION)))


def test_a_refused_status_and_a_disconnect_say_why() -> None:
    wire = V5()
    assert read(wire, mqtt5.PubAckPacket(4).write()) == p.PacketIdOnly(Type.PUBACK, 4)
    no_one = mqtt5.PubAckPacket(5, reason_code=mqtt5.PubAckReasonCode.NO_MATCHING_SUBSCRIBERS).write()
    assert read(wire, no_one) == p.PacketIdOnly(Type.PUBACK, 5)  # not a refusal
    denied = mqtt5.PubAckPacket(6, reason_code=mqtt5.PubAckReasonCode.NOT_AUTHORIZED).write()
    assert read(wire, denied) == Refused(6, "not authorized")
    taken = mqtt5.DisconnectPacket(reason_code=mqtt5.DisconnectReasonCode.SESSION_TAKEN_OVER).write()
    with pytest.raises(EOFError, match="the broker disconnected: session taken over"):
        read(wire, taken)
