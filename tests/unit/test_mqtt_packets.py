"""The MQTT 3.1.1 codec: round trips, framing across any split, and refusal of malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from intent_contract import mqtt_packets as p
from intent_contract.errors import MalformedPacketError
from intent_contract.mqtt_packets import Type

names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00+#/"), min_size=1, max_size=20)
topics = st.lists(names, min_size=1, max_size=4).map("/".join)
packet_ids = st.integers(1, 65535)

publishes = st.builds(
    lambda topic, payload, qos, retain, dup, pid: p.Publish(
        topic, payload, qos, retain, dup and qos > 0, pid if qos else None
    ),
    topics,
    st.binary(max_size=300),
    st.integers(0, 2),
    st.booleans(),
    st.booleans(),
    packet_ids,
)
wills = st.none() | st.builds(p.Will, topics, st.binary(max_size=50), st.integers(0, 2), st.booleans())
connects = st.builds(
    lambda cid, clean, keepalive, will, user, password: p.Connect(
        "MQTT", 4, cid, clean, keepalive, will, user, password if user is not None else None
    ),
    st.text(max_size=23).filter(lambda s: "\x00" not in s),
    st.booleans(),
    st.integers(0, 65535),
    wills,
    st.none() | names,
    st.none() | st.binary(max_size=30),
)
others = st.one_of(
    st.builds(p.PacketIdOnly, st.sampled_from([Type.PUBACK, Type.PUBREC, Type.PUBREL, Type.PUBCOMP]), packet_ids),
    st.builds(p.Subscribe, packet_ids, st.lists(st.tuples(topics, st.integers(0, 2)), min_size=1).map(tuple)),
    st.builds(p.Unsubscribe, packet_ids, st.lists(topics, min_size=1).map(tuple)),
    st.builds(p.Suback, packet_ids, st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1).map(tuple)),
    st.builds(p.Connack, st.booleans(), st.integers(0, 5)),
    st.sampled_from([p.Bare(Type.PINGREQ), p.Bare(Type.PINGRESP), p.Bare(Type.DISCONNECT)]),
)


@given(st.lists(st.one_of(publishes, connects, others), min_size=1, max_size=6), st.data())
def test_any_packets_survive_encoding_and_any_split(packets: list[p.Packet], data: st.DataObject) -> None:
    stream = b"".join(p.encode(packet) for packet in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    framer = p.Framer(max_packet=1 << 20)
    decoded: list[p.Packet] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoded.extend(p.decode(first, body) for first, body in framer.feed(stream[start:end]))
    assert decoded == packets
    assert framer.buffered == 0


def test_a_packet_over_the_limit_is_refused_from_its_header_before_its_body_arrives() -> None:
    framer = p.Framer(max_packet=1000)
    header = bytes([0x30]) + bytes([0x80, 0x80, 0x80, 0x01])  # PUBLISH announcing 2 MiB
    with pytest.raises(MalformedPacketError, match="over the 1,000-byte limit"):
        framer.feed(header)


def test_a_cutting_framer_keeps_the_head_of_a_publish_over_the_limit_and_drops_the_rest() -> None:
    big = p.encode_publish("outbox/a/email.send", b"x" * 5000, 1, 7, retain=False, dup=False)
    after = p.encode_publish("outbox/a/email.send", b"{}", 1, 8, retain=False, dup=False)
    stream = big + after + p.encode(p.Bare(p.Type.PINGRESP))
    framer = p.CuttingFramer(1000, keep=100)
    out: list[tuple[int, bytes]] = []
    for start in range(0, len(stream), 7):  # in pieces smaller than the head: it is waited for
        out += framer.feed(stream[start : start + 7])
    assert [first for first, _ in out] == [0x32 | p.CUT, 0x32, 0xD0]
    cut = p.decode(out[0][0] & 0xFF, out[0][1])
    assert isinstance(cut, p.Publish)
    assert (cut.topic, cut.packet_id, len(out[0][1])) == ("outbox/a/email.send", 7, 100)
    assert list(framer.cut_sizes) == [len(big) - 3]  # the body's length: the fixed header is 3 bytes
    assert p.decode(*out[1]) == p.Publish("outbox/a/email.send", b"{}", 1, False, False, 8)
    assert framer.buffered == 0
    with pytest.raises(MalformedPacketError, match="over the 1,000-byte limit"):  # anything but a PUBLISH
        p.CuttingFramer(1000, keep=100).feed(bytes([0x90]) + bytes([0x80, 0x80, 0x01]))


def test_a_length_of_five_bytes_is_malformed() -> None:
    with pytest.raises(MalformedPacketError, match="longer than 4 bytes"):
        p.Framer(1 << 30).feed(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (bytes([0x36, 5, 0, 1, ord("a"), 0, 1]), "QoS 3"),
        (bytes([0x38, 3, 0, 1, ord("a")]), "DUP set at QoS 0"),
        (bytes([0x30, 3, 0, 1, ord("#")]), "wildcards"),
        (bytes([0x32, 5, 0, 1, ord("a"), 0, 0]), "packet id 0"),
        (bytes([0x30, 1, 0]), "ends early"),
        (bytes([0x30, 3, 0, 5, ord("a")]), "runs past the end"),
        (bytes([0x32, 4, 0, 1, ord("a"), 0]), "ends early"),  # QoS 1 with half a packet id
        (bytes([0x30, 2, 0, 0]), "not empty"),
        (bytes([0x80, 6, 0, 1, 0, 1, ord("a"), 0]), "reserved flags"),
        (bytes([0x82, 2, 0, 1]), "without a topic filter"),
        (bytes([0x82, 6, 0, 1, 0, 1, ord("a"), 3]), "requested QoS"),
        (bytes([0x62, 3, 0, 1, 0]), "unexpected bytes"),
        (bytes([0x30, 4, 0, 2, 0xC3, 0x28]), "UTF-8"),
        (bytes([0x30, 3, 0, 1, 0]), "U\\+0000"),
        (bytes([0xF0, 0]), "only in MQTT 5"),
        (bytes([0x00, 0]), "does not exist"),
    ],
)
def test_malformed_packets_are_refused_with_the_reason(raw: bytes, reason: str) -> None:
    (first, body), *_ = p.Framer(1 << 20).feed(raw)
    with pytest.raises(MalformedPacketError, match=reason):
        p.decode(first, body)


def test_connect_flags_that_contradict_each_other_are_malformed() -> None:
    good = p.encode(p.Connect("MQTT", 4, "c", True, 30))
    flags_at = 2 + 2 + 4 + 1  # fixed header, name length, "MQTT", level
    for bad_flags, reason in [(0x03, "reserved flag"), (0x40 | 0x02, "password without a user name"),
                              (0x20 | 0x02, "without a will")]:  # fmt: skip
        raw = bytearray(good)
        raw[flags_at] = bad_flags
        (first, body), *_ = p.Framer(1 << 20).feed(bytes(raw))
        with pytest.raises(MalformedPacketError, match=reason):
            p.decode(first, body)


def test_an_mqtt5_connect_is_recognised_and_kept_whole_for_its_own_decoder() -> None:
    body = b"\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00\x01c"
    raw = bytes([0x10, len(body)]) + body
    (first, rest), *_ = p.Framer(1 << 20).feed(raw)
    packet = p.decode(first, rest)
    assert isinstance(packet, p.Connect)
    assert packet.level == 5
    assert packet.raw == raw
