"""The endpoint's retained messages: one per topic, bounded in bytes, cleared by an empty payload."""

from __future__ import annotations

from edge_outbox.mqtt.retained import Retained
from edge_outbox.mqtt.session import message_bytes


def test_a_message_past_the_bound_is_refused_and_the_topic_keeps_what_it_had() -> None:
    retained = Retained(max_bytes=message_bytes("a/1", b"x" * 100) * 2)
    assert retained.keep("a/1", b"x" * 100, 1) and retained.keep("a/2", b"y" * 100, 0)
    assert not retained.keep("a/3", b"z", 1)
    assert not retained.keep("a/1", b"x" * 101, 1)  # a bigger replacement does not fit either
    assert retained.refused == 2
    assert sorted((m.topic, m.payload, m.qos) for m in retained.matching("a/#")) == [
        ("a/1", b"x" * 100, 1),
        ("a/2", b"y" * 100, 0),
    ]


def test_an_empty_payload_clears_the_topic_and_frees_its_bytes() -> None:
    retained = Retained(max_bytes=message_bytes("a/1", b"x" * 100))
    assert retained.keep("a/1", b"x" * 100, 1)
    assert retained.keep("a/1", b"", 0)
    assert list(retained.matching("#")) == []
    assert retained.keep("a/1", b"w" * 100, 2)  # the room came back
    assert [(m.topic, m.payload, m.qos) for m in retained.matching("a/+")] == [("a/1", b"w" * 100, 2)]
    assert list(retained.matching("b/#")) == []


def test_a_retained_message_past_its_expiry_is_deleted_and_frees_its_bytes() -> None:
    retained = Retained(max_bytes=100)
    assert retained.keep("a/short", b"x" * 40, 1, expires=10.0)
    assert retained.keep("a/long", b"y" * 40, 1, expires=100.0)
    assert not retained.keep("a/third", b"z" * 40, 1)  # no room yet
    assert [(m.topic, m.expires) for m in retained.matching("a/#", now=20.0)] == [("a/long", 100.0)]
    assert retained.keep("a/third", b"z" * 40, 1)
