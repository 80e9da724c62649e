"""The two MQTT versions the endpoint speaks, behind one interface: packets in as `mqtt_packets` values,
answers out as bytes. MQTT 3.1.1 (and 3.1) uses our own codec; MQTT 5 uses the `mqtt5` package's
sans-IO codec and adds what version 5 can say that 3.1.1 cannot: reason codes on PUBACK (a rejected
intent is answered 0x99 "payload format invalid" with its code and detail as the reason string),
CONNACK and DISCONNECT, the client's receive maximum, message expiry (an intent's deadline, what is left
of it on a message passed on), and a content type
on status messages. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import mqtt5

from edge_outbox.mqtt.session import NO_LOCAL, RETAIN_AS_PUBLISHED, Passed, Send
from edge_outbox.mqtt.v5_strings import check_strings
from edge_outbox.states import State
from intent_contract import mqtt_packets as p
from intent_contract.errors import MalformedPacketError
from intent_contract.mqtt_packets import ConnackCode, Type
from intent_contract.readable import readable

# MQTT 5 reason codes used by the endpoint
SUCCESS = 0x00
NORMAL = 0x00
UNSPECIFIED = 0x80
MALFORMED = 0x81
PROTOCOL_ERROR = 0x82
NOT_AUTHORIZED = 0x87
SERVER_SHUTTING_DOWN = 0x8B
KEEP_ALIVE_TIMEOUT = 0x8D
SESSION_TAKEN_OVER = 0x8E
TOPIC_FILTER_INVALID = 0x8F
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
QUOTA_EXCEEDED = 0x97
PAYLOAD_FORMAT_INVALID = 0x99
SHARED_NOT_SUPPORTED = 0x9E
DISCONNECT_WITH_WILL = 0x04

_CONNACK_V5 = {
    ConnackCode.ACCEPTED: mqtt5.ConnAckReasonCode.SUCCESS,
    ConnackCode.BAD_PROTOCOL_VERSION: mqtt5.ConnAckReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
    ConnackCode.IDENTIFIER_REJECTED: mqtt5.ConnAckReasonCode.CLIENT_ID_NOT_VALID,
    ConnackCode.SERVER_UNAVAILABLE: mqtt5.ConnAckReasonCode.SERVER_UNAVAILABLE,
    ConnackCode.BAD_CREDENTIALS: mqtt5.ConnAckReasonCode.BAD_USER_NAME_OR_PASSWORD,
    ConnackCode.NOT_AUTHORIZED: mqtt5.ConnAckReasonCode.NOT_AUTHORIZED,
}
_STATUS_CONTENT_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an acknowledgement says: a reason code and, for people, why (MQTT 5 only)."""

    code: int = SUCCESS
    why: str = ""


OK = Verdict()
VerdictOf = Callable[[Any], Verdict]  # the verdict of a commit's result


def refuses(result: object) -> bool:
    """Whether the MQTT 5 acknowledgement of an intake publish refuses it (a reason code of 0x80 or more)."""
    return intake_verdict(result).code >= UNSPECIFIED


def intake_verdict(result: object) -> Verdict:
    """What an acknowledgement of an intake publish says: refused input is stored, and named (MQTT 5)."""
    row = getattr(result, "row", None)
    if row is None or row.state is not State.REJECTED:
        return OK
    code = NOT_AUTHORIZED if row.code == "not_authorized" else PAYLOAD_FORMAT_INVALID
    return Verdict(code, f"{row.code}: {row.detail}")


class Dialect(Protocol):
    """One MQTT version's way of writing the endpoint's answers."""

    version: int

    def decode(self, first: int, body: bytes) -> p.Packet: ...

    def connack(
        self, present: bool, code: ConnackCode, assigned_id: str | None = None, session_expiry: int | None = None
    ) -> bytes:
        """The answer to CONNECT; `session_expiry` (MQTT 5): the interval granted, when lower than asked."""

    def publish(self, send: Send) -> bytes: ...

    def ack(self, kind: Type, packet_id: int, verdict: Verdict = OK) -> bytes:
        """PUBACK, PUBREC, PUBREL, PUBCOMP."""

    def suback(self, packet_id: int, codes: list[int]) -> bytes:
        """`codes`: the granted QoS, or an MQTT 5 reason code of 0x80 or above for a refused filter."""

    def unsuback(self, packet_id: int, count: int) -> bytes: ...

    def pingresp(self) -> bytes: ...

    def disconnect(self, reason: int) -> bytes:
        """What to send before closing the connection on our side (nothing in 3.1.1)."""

    def refuse_connect(self, reason: int) -> bytes:
        """What to send before closing a connection whose CONNECT is not answered yet (nothing in 3.1.1)."""


class V311:
    """MQTT 3.1.1 and 3.1 on our own codec; verdicts cannot be said and are dropped."""

    version = 4

    def decode(self, first: int, body: bytes) -> p.Packet:
        return p.decode(first, body)

    def connack(
        self, present: bool, code: ConnackCode, assigned_id: str | None = None, session_expiry: int | None = None
    ) -> bytes:
        return p.encode(p.Connack(present, code))

    def publish(self, send: Send) -> bytes:
        message = send.message
        return p.encode_publish(message.topic, message.payload, message.qos, send.packet_id, retain=message.retain,
                                dup=send.dup)  # fmt: skip

    def ack(self, kind: Type, packet_id: int, verdict: Verdict = OK) -> bytes:
        return p.encode_ack(kind, packet_id)

    def suback(self, packet_id: int, codes: list[int]) -> bytes:
        return p.encode(p.Suback(packet_id, tuple(min(c, p.SUBACK_FAILURE) for c in codes)))

    def unsuback(self, packet_id: int, count: int) -> bytes:
        return p.encode_ack(Type.UNSUBACK, packet_id)

    def pingresp(self) -> bytes:
        return p.encode(p.Bare(Type.PINGRESP))

    def disconnect(self, reason: int) -> bytes:
        return b""

    def refuse_connect(self, reason: int) -> bytes:
        return b""


_NOTHING_PASSED = Passed()


def _options(topic_filter: Any) -> int:
    """An MQTT 5 subscription's options in one int, as the SUBSCRIBE packet has them (edge_outbox.mqtt.session)."""
    return (
        int(topic_filter.max_qos)
        | (NO_LOCAL if topic_filter.no_local else 0)
        | (RETAIN_AS_PUBLISHED if topic_filter.retain_as_published else 0)
        | int(topic_filter.retain_handling.value) << 4
    )


def _passed(packet: Any) -> Passed | None:
    """The properties of an MQTT 5 PUBLISH to pass on to its subscribers, if it has any."""
    props = Passed(packet.payload_format_indicator, packet.content_type, packet.response_topic,
                   packet.correlation_data, tuple(packet.user_properties or ()))  # fmt: skip
    return None if props == _NOTHING_PASSED else props


def read_mqtt5(first: int, body: bytes) -> Any:
    """The `mqtt5` codec's packet of this first byte and body; MalformedPacketError for one it refuses or
    panics on (the endpoint's and attach mode's reads)."""
    try:
        packet, _size = mqtt5.read(memoryview(p.whole(first, body)))
    except (ValueError, IndexError) as exc:
        raise MalformedPacketError(f"malformed MQTT 5 packet: {exc}") from None
    except BaseException as exc:
        if not _panicked(exc):
            raise
        raise MalformedPacketError(_PANIC_DETAIL) from None
    return packet


class V5:
    """MQTT 5 on the `mqtt5` package: its packets in, ours out to the endpoint, and back.

    `window` and `max_packet` are announced in CONNACK (receive maximum, maximum packet size).
    """

    version = 5

    def __init__(self, window: int, max_packet: int) -> None:
        self._window = window
        self._max_packet = max_packet
        self.client_max: int | None = None  # the client's maximum packet size, once its CONNECT is read
        self.problem_info = True  # the client's request problem information: False, no reason string on a PUBACK

    def decode(self, first: int, body: bytes) -> p.Packet:
        check_strings(first, body)  # before the codec, which prints a traceback and a panic for such a string
        return self._ours(read_mqtt5(first, body))

    def _ours(self, packet: Any) -> p.Packet:
        if isinstance(packet, mqtt5.PublishPacket):
            if packet.topic_alias is not None:
                raise MalformedPacketError("topic aliases are not accepted (topic alias maximum 0)")
            _no_nul(packet.topic)
            return p.Publish(packet.topic, bytes(packet.payload), int(packet.qos), packet.retain, packet.duplicate,
                             packet.packet_id, packet.message_expiry_interval, _passed(packet))  # fmt: skip
        if isinstance(packet, mqtt5.ConnectPacket):
            self.problem_info = packet.request_problem_info
            will = None
            _no_nul(packet.client_id, packet.username)
            if packet.will is not None:
                w = packet.will
                _no_nul(w.topic)
                will = p.Will(w.topic, bytes(w.payload or b""), int(w.qos), w.retain)
            return p.Connect("MQTT", 5, packet.client_id, packet.clean_start, packet.keep_alive, will,
                             packet.username, packet.password, session_expiry=packet.session_expiry_interval,
                             receive_max=packet.receive_max, max_packet=packet.max_packet_size)  # fmt: skip
        kinds = {mqtt5.PubAckPacket: Type.PUBACK, mqtt5.PubRecPacket: Type.PUBREC,
                 mqtt5.PubRelPacket: Type.PUBREL, mqtt5.PubCompPacket: Type.PUBCOMP}  # fmt: skip
        for cls, kind in kinds.items():
            if isinstance(packet, cls):
                return p.PacketIdOnly(kind, packet.packet_id)  # type: ignore[attr-defined]
        if isinstance(packet, mqtt5.SubscribePacket):
            _no_nul(*(f.pattern for f in packet.topic_filters))
            return p.Subscribe(packet.packet_id, tuple((f.pattern, _options(f)) for f in packet.topic_filters))
        if isinstance(packet, mqtt5.UnsubscribePacket):
            _no_nul(*packet.patterns)
            return p.Unsubscribe(packet.packet_id, tuple(packet.patterns))
        if isinstance(packet, mqtt5.PingReqPacket):
            return p.Bare(Type.PINGREQ)
        if isinstance(packet, mqtt5.DisconnectPacket):
            return p.Bare(Type.DISCONNECT, int(packet.reason_code), packet.session_expiry_interval)
        raise MalformedPacketError(f"{type(packet).__name__} is not accepted here")

    def connack(
        self, present: bool, code: ConnackCode, assigned_id: str | None = None, session_expiry: int | None = None
    ) -> bytes:
        return bytes(
            mqtt5.ConnAckPacket(
                session_present=present,
                reason_code=_CONNACK_V5[code],
                session_expiry_interval=session_expiry,
                assigned_client_id=assigned_id,
                receive_max=self._window,
                max_packet_size=self._max_packet,
                topic_alias_max=0,
                shared_subscription_available=False,
                subscription_id_available=False,
            ).write()
        )

    def publish(self, send: Send) -> bytes:
        message = send.message
        status = bool(message.seq)
        props = message.props or _NOTHING_PASSED
        return bytes(
            mqtt5.PublishPacket(
                message.topic,
                message.payload,
                qos=mqtt5.QoS(message.qos),
                retain=message.retain,
                packet_id=send.packet_id,
                duplicate=send.dup,
                payload_format_indicator=1 if status else props.payload_format,
                message_expiry_interval=send.expiry_s,
                content_type=_STATUS_CONTENT_TYPE if status else props.content_type,
                response_topic=props.response_topic,
                correlation_data=props.correlation_data,
                user_properties=list(props.user_properties) or None,
            ).write()
        )

    def ack(self, kind: Type, packet_id: int, verdict: Verdict = OK) -> bytes:
        # A client that asked for no problem information takes a reason string on a PUBACK as a protocol error
        # [MQTT-3.1.2-29]: it left at each rejected intent, and sent it again on its next connection.
        why = readable(verdict.why)[:200] if self.problem_info else ""  # readable: no U+0000 in MQTT 5
        data = self._ack(kind, packet_id, verdict.code, why or None)
        if self.client_max is not None and len(data) > self.client_max:
            # The reason string is left out rather than go past the client's maximum [MQTT-3.4.2-2]
            data = self._ack(kind, packet_id, verdict.code, None)
        return data

    @staticmethod
    def _ack(kind: Type, packet_id: int, code: int, why: str | None) -> bytes:
        if kind is Type.PUBACK:
            return bytes(mqtt5.PubAckPacket(packet_id, reason_code=mqtt5.PubAckReasonCode(code),
                                            reason_str=why).write())  # fmt: skip
        if kind is Type.PUBREC:
            return bytes(mqtt5.PubRecPacket(packet_id, reason_code=mqtt5.PubRecReasonCode(code),
                                            reason_str=why).write())  # fmt: skip
        if kind is Type.PUBREL:
            return bytes(mqtt5.PubRelPacket(packet_id).write())
        return bytes(mqtt5.PubCompPacket(packet_id).write())

    def suback(self, packet_id: int, codes: list[int]) -> bytes:
        reasons = [mqtt5.SubAckReasonCode(c) for c in codes]
        return bytes(mqtt5.SubAckPacket(packet_id, reasons).write())

    def unsuback(self, packet_id: int, count: int) -> bytes:
        return bytes(mqtt5.UnsubAckPacket(packet_id, [mqtt5.UnsubAckReasonCode.SUCCESS] * count).write())

    def pingresp(self) -> bytes:
        return bytes(mqtt5.PingRespPacket().write())

    def disconnect(self, reason: int) -> bytes:
        return bytes(mqtt5.DisconnectPacket(reason_code=mqtt5.DisconnectReasonCode(reason)).write())

    def refuse_connect(self, reason: int) -> bytes:
        # No DISCONNECT before a successful CONNACK [MQTT-3.14.0-1]: a CONNACK with the reason says it, or
        # "unspecified error" for a reason a CONNACK cannot carry (a keepalive timeout, a shutdown).
        try:
            code = mqtt5.ConnAckReasonCode(reason)
        except ValueError:
            code = mqtt5.ConnAckReasonCode.UNSPECIFIED_ERROR
        return bytes(mqtt5.ConnAckPacket(reason_code=code).write())


def _no_nul(*texts: str | None) -> None:
    """A string holding U+0000 makes a packet malformed [MQTT-1.5.4-2]: `mqtt5` (0.8.0) lets it through, our
    3.1.1 codec does not, and a NUL in a topic reached the store and the log."""
    if any(text is not None and "\x00" in text for text in texts):
        raise MalformedPacketError("string contains U+0000")


_PANIC_DETAIL = "malformed MQTT 5 packet: the codec could not read it (a string in it that is not UTF-8 does this)"


def _panicked(exc: BaseException) -> bool:
    """True for pyo3's PanicException: `mqtt5` (0.8.0) panics, rather than raising, on a string that is not
    UTF-8 in any field of any packet (a topic, a client id, a property). It is a BaseException, so it went
    past every handler to asyncio's "Unhandled exception", and it cannot be imported by name."""
    kind = type(exc)
    return kind.__module__ == "pyo3_runtime" and kind.__name__ == "PanicException"


def dialect_of(connect: p.Connect, window: int, max_packet: int) -> Dialect:
    """The dialect a CONNECT asks for (3.1.1 for any level but 5: an unknown level is refused in 3.1.1)."""
    return V5(window, max_packet) if connect.level == 5 else V311()


def whole_connect(dialect: Dialect, first: int, body: bytes, connect: p.Connect) -> p.Connect:
    """The CONNECT as its dialect reads it: an MQTT 5 one with its properties (read by the 3.1.1 codec first, to
    learn its version), the client's maximum packet size then noted by the dialect."""
    if not isinstance(dialect, V5):
        return connect
    decoded = dialect.decode(first, body)
    assert isinstance(decoded, p.Connect)
    dialect.client_max = decoded.max_packet
    return decoded
