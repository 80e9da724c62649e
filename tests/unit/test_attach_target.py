"""`--attach` and its password read into an AttachTarget (edge_outbox.settings), without a broker."""

import pytest

from edge_outbox.errors import ConfigError
from edge_outbox.settings import AttachTarget


def test_a_password_needs_a_user_in_the_url() -> None:
    """MQTT 3.1.1 forbids a password without a user name: Mosquitto closed each such connection, and the outbox
    took it for a broker that was away, for ever."""
    with pytest.raises(ConfigError, match=r"names no user: use mqtt\[s\]://USER@HOST:PORT") as refused:
        AttachTarget.parse("mqtt://broker:1883", "s3cret", "edge-outbox")
    assert "s3cret" not in str(refused.value)
    assert AttachTarget.parse("mqtt://site@broker:1883", "s3cret", "edge-outbox").password == "s3cret"


def test_an_empty_password_without_a_user_is_none() -> None:
    """`EDGE_OUTBOX_ATTACH_PASSWORD=` in systemd's EnvironmentFile, for an anonymous broker: the empty password
    went out without a user name (a protocol error to a 3.1.1 broker, which closed the connection)."""
    target = AttachTarget.parse("mqtt://broker:1883", "", "edge-outbox")
    assert (target.username, target.password) == (None, None)
    assert AttachTarget.parse("mqtt://site@broker:1883", "", "edge-outbox").password == ""  # a user's empty one
