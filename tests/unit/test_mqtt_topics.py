"""Topic filters: what is valid, what matches (MQTT 3.1.1 section 4.7)."""

from __future__ import annotations

import pytest

from edge_outbox.mqtt.topics import matches, may_match, valid_filter


@pytest.mark.parametrize(
    ("topic_filter", "valid"),
    [("a/b", True), ("#", True), ("a/#", True), ("+", True), ("+/+/c", True), ("/", True),
     ("", False), ("a/#/b", False), ("a#", False), ("a/b+", False), ("+a", False), ("a\x00", False)],
)  # fmt: skip
def test_valid_filters(topic_filter: str, valid: bool) -> None:
    assert valid_filter(topic_filter) is valid


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("sport/tennis/#", "sport/tennis", True),
        ("sport/tennis/#", "sport/tennis/player1/score", True),
        ("sport/#", "sport", True),
        ("sport/+", "sport", False),
        ("sport/+", "sport/", True),
        ("+/+", "/finance", True),
        ("/+", "/finance", True),
        ("+", "/finance", False),
        ("#", "$SYS/uptime", False),
        ("+/uptime", "$SYS/uptime", False),
        ("$SYS/#", "$SYS/uptime", True),
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+/c", "a/b/c/d", False),
    ],
)
def test_matching(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [("outbox/hvac/status/#", True), ("outbox/+/status/+", True), ("#", True), ("outbox/hvac/#", True),
     ("outbox/hvac/email.send", False), ("outbox/+/+", False), ("other/#", False), ("+/+/status/x/y", False)],
)  # fmt: skip
def test_may_match_a_status_topic(topic_filter: str, expected: bool) -> None:
    assert may_match(topic_filter, ("outbox", None, "status", None)) is expected
