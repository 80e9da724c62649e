"""The endpoint's retained messages: one per topic, within a bound on their bytes in all. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Iterator

from edge_outbox.mqtt.session import message_bytes
from edge_outbox.mqtt.topics import matches


class Retained:
    """Retained messages by topic, topics and payloads together at most `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.refused = 0  # retained messages not kept: past max_bytes
        self._messages: dict[str, tuple[bytes, int]] = {}
        self._bytes = 0

    def keep(self, topic: str, payload: bytes, qos: int) -> bool:
        """Keep (or with an empty payload clear) the retained message of `topic`; False when it does not fit:
        it is refused, and the topic keeps what it had."""
        old = self._messages.get(topic)
        freed = 0 if old is None else message_bytes(topic, old[0])
        size = message_bytes(topic, payload) if payload else 0
        if payload and self._bytes - freed + size > self.max_bytes:
            self.refused += 1
            return False
        if payload:
            self._messages[topic] = (payload, qos)
        else:
            self._messages.pop(topic, None)
        self._bytes += size - freed
        return True

    def matching(self, topic_filter: str) -> Iterator[tuple[str, bytes, int]]:
        """(topic, payload, qos) of each retained message `topic_filter` matches."""
        for topic, (payload, qos) in self._messages.items():
            if matches(topic_filter, topic):
                yield topic, payload, qos
