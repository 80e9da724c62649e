"""Attach mode's two MQTT versions, behind one interface: what the client writes, as bytes, and what the broker
sends, as `mqtt_packets` values (edge_outbox.attach serves the connection).

MQTT 5 (`V5`, the `mqtt5` package's codec) is tried first: through it an app's message expiry interval reaches the
outbox and becomes the intent's deadline (its `ttl` when the payload has none), as on the embedded endpoint, and the
broker says why it refuses a status (its PUBACK's reason code). A broker that speaks 3.1.1 only answers that CONNECT
with the 3.1.1 CONNACK "unacceptable protocol version", and the outbox attaches with 3.1.1 (`V311`, our own codec)
from then on. Acknowledgements, PINGREQ and DISCONNECT are the same bytes in both. Pure: no I/O.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple, NoReturn

import mqtt5

from edge_outbox.errors import AttachVersionError
from edge_outbox.mqtt.dialect import _no_nul, read_mqtt5
from edge_outbox.settings import AttachTarget
from intent_contract import mqtt_packets as p
from intent_contract.errors import MalformedPacketError
from intent_contract.mqtt_packets import ConnackCode, Type

NEVER_EXPIRES = 0xFFFFFFFF  # MQTT 5 session expiry: the session is kept as clean session 0 keeps it in 3.1.1
_STATUS_PROPERTIES = b"\x01\x01\x03" + p._str("application/json")  # payload format UTF-8, content type JSON


class Refused(NamedTuple):
    """An MQTT 5 PUBACK of a status with a reason code of 0x80 or above: the broker did not take it."""

    packet_id: int
    reason: str


class V311:
    """MQTT 3.1.1 on our own codec."""

    version = 4
    receive_max = 65535  # how many QoS 1 publishes the broker takes in flight: 3.1.1 cannot say
    server_keepalive: int | None = None  # the keepalive the broker says we must use instead of ours (MQTT 5)
    max_qos = 1  # the highest QoS of a status: 0 for a broker whose CONNACK says it takes no more (MQTT 5)
    max_packet: int | None = None  # the largest packet the broker takes (MQTT 5; None: no limit said)

    def connect(self, target: AttachTarget, keepalive: int, receive_max: int) -> bytes:
        password = target.password.encode() if target.password is not None else None
        return p.encode(p.Connect("MQTT", 4, target.client_id, False, keepalive, None, target.username, password))

    def subscribe(self, packet_id: int, topic_filter: str, qos: int = 1) -> bytes:
        return p.encode(p.Subscribe(packet_id, ((topic_filter, qos),)))

    def publish(self, topic: str, payload: bytes, qos: int, packet_id: int | None, *, status: bool = False) -> bytes:
        return p.encode_publish(topic, payload, qos, packet_id, retain=False, dup=False)

    def decode(self, first: int, body: bytes) -> p.Packet | Refused:
        return p.decode(first, body)

    def refusal(self, code: int) -> str:
        try:
            return ConnackCode(code).name.lower().replace("_", " ")
        except ValueError:
            return f"CONNACK code {code}"


class V5(V311):
    """MQTT 5 on the `mqtt5` package: a persistent session (clean start off, a session that never expires)."""

    version = 5

    def __init__(self) -> None:
        self.receive_max = 65535
        self.server_keepalive: int | None = None
        self.max_qos = 1
        self.max_packet: int | None = None

    def connect(self, target: AttachTarget, keepalive: int, receive_max: int) -> bytes:
        password = target.password.encode() if target.password is not None else None
        return bytes(
            mqtt5.ConnectPacket(
                target.client_id,
                username=target.username,
                password=password,
                clean_start=False,
                keep_alive=keepalive,
                session_expiry_interval=NEVER_EXPIRES,
                receive_max=receive_max,
            ).write()
        )

    def subscribe(self, packet_id: int, topic_filter: str, qos: int = 1) -> bytes:
        # Retain as published off and retained messages sent at subscribe, as in 3.1.1: a copy sent because we
        # subscribed comes with RETAIN=1, a message published since with RETAIN=0 [MQTT-3.3.1-12, -9].
        topic = mqtt5.TopicFilter(topic_filter, max_qos=mqtt5.QoS(qos), retain_as_published=False,
                                  retain_handling=mqtt5.RetainHandling.SEND_ALWAYS)  # fmt: skip
        return bytes(mqtt5.SubscribePacket(packet_id, [topic]).write())

    def publish(self, topic: str, payload: bytes, qos: int, packet_id: int | None, *, status: bool = False) -> bytes:
        """Written out (a status is one per state change); a status says it is JSON, as the endpoint's do."""
        raw = topic.encode()
        properties = _STATUS_PROPERTIES if status else b""
        head = struct.pack("!H", len(raw)) + raw + (struct.pack("!H", packet_id) if qos else b"")
        head += p._varint(len(properties)) + properties
        return bytes([0x30 | (qos << 1)]) + p._varint(len(head) + len(payload)) + head + payload

    def decode(self, first: int, body: bytes) -> p.Packet | Refused:
        if first >> 4 == Type.PUBLISH and len(body) > 2:
            # Most intents carry no property: such a PUBLISH is a 3.1.1 one with a property length of 0 after the
            # packet id, read by our codec (mqtt5's read took 5.5 us a message where ours takes 3).
            at = 2 + int.from_bytes(body[:2], "big") + (2 if first & 0x06 else 0)
            if at < len(body) and body[at] == 0:
                return p.decode(first, body[:at] + body[at + 1 :])
        if first >> 4 == Type.CONNACK and len(body) == 2 and body[1] == ConnackCode.BAD_PROTOCOL_VERSION:
            raise AttachVersionError("the broker speaks MQTT 3.1.1 only (CONNACK: unacceptable protocol version)")
        return self._ours(read_mqtt5(first, body))

    def _ours(self, packet: Any) -> p.Packet | Refused:
        if isinstance(packet, mqtt5.PublishPacket):
            if packet.topic_alias is not None:  # we announce a topic alias maximum of 0
                raise MalformedPacketError("the broker sent a topic alias (topic alias maximum 0)")
            _no_nul(packet.topic)
            return p.Publish(packet.topic, bytes(packet.payload), int(packet.qos), packet.retain, packet.duplicate,
                             packet.packet_id, packet.message_expiry_interval)  # fmt: skip
        if isinstance(packet, mqtt5.PubAckPacket):
            if int(packet.reason_code) >= 0x80:
                reason = packet.reason_code.name.lower().replace("_", " ")
                return Refused(packet.packet_id, f"{reason}{f' ({packet.reason_str})' if packet.reason_str else ''}")
            return p.PacketIdOnly(Type.PUBACK, packet.packet_id)
        if isinstance(packet, mqtt5.ConnAckPacket):
            self.receive_max = packet.receive_max
            self.server_keepalive = packet.server_keep_alive  # Mosquitto's max_keepalive, when ours is longer
            # Mosquitto's max_qos 0: a PUBLISH at QoS 1 is a protocol error, and it ends the connection on it
            self.max_qos = min(1, int(packet.max_qos))
            self.max_packet = packet.max_packet_size  # Mosquitto's max_packet_size: it ends the link on a larger one
            return p.Connack(packet.session_present, int(packet.reason_code))
        if isinstance(packet, mqtt5.SubAckPacket):
            return p.Suback(packet.packet_id, tuple(int(c) for c in packet.reason_codes))
        if isinstance(packet, mqtt5.PingRespPacket):
            return p.Bare(Type.PINGRESP)
        if isinstance(packet, mqtt5.DisconnectPacket):
            _disconnected(packet)
        raise MalformedPacketError(f"the broker sent {type(packet).__name__}")

    def refusal(self, code: int) -> str:
        try:
            return mqtt5.ConnAckReasonCode(code).name.lower().replace("_", " ")
        except ValueError:
            return f"CONNACK reason code {code:#04x}"


def _disconnected(packet: mqtt5.DisconnectPacket) -> NoReturn:
    """The broker ends the connection and says why (MQTT 5): a lost connection, retried, with its reason."""
    why = f" ({packet.reason_str})" if packet.reason_str else ""
    raise EOFError(f"the broker disconnected: {packet.reason_code.name.lower().replace('_', ' ')}{why}")


def wire_of(version: int) -> V311:
    return V5() if version == 5 else V311()
