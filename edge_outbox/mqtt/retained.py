"""The endpoint's retained messages: one per topic, within a bound on their bytes in all. Pure: no I/O."""

from __future__ import annotations

from edge_outbox.mqtt.session import Message, Passed
from edge_outbox.mqtt.topics import matches


class Retained:
    """Retained messages by topic, topics and payloads together at most `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.refused = 0  # retained messages not kept: past max_bytes
        self._messages: dict[str, Message] = {}
        self._bytes = 0

    def keep(
        self, topic: str, payload: bytes, qos: int, expires: float | None = None, props: Passed | None = None
    ) -> bool:
        """Keep (or with an empty payload clear) the retained message of `topic`, until `expires` (monotonic; MQTT 5
        message expiry) if given, with the MQTT 5 properties to pass on; False when it does not fit: it is refused,
        and the topic keeps what it had."""
        old = self._messages.get(topic)
        freed = 0 if old is None else old.size()
        message = Message(topic, payload, qos, True, expires=expires, props=props)
        size = message.size() if payload else 0
        if payload and self._bytes - freed + size > self.max_bytes:
            self.refused += 1
            return False
        if payload:
            self._messages[topic] = message
        else:
            self._messages.pop(topic, None)
        self._bytes += size - freed
        return True

    def matching(self, topic_filter: str, now: float = 0.0) -> list[Message]:
        """The retained messages `topic_filter` matches; those expired at `now` (monotonic) are deleted instead
        [MQTT-3.3.2-5]."""
        found, gone = [], []
        for topic, message in self._messages.items():
            if message.expires is not None and message.expires <= now:
                gone.append(topic)
            elif matches(topic_filter, topic):
                found.append(message)
        for topic in gone:
            self.keep(topic, b"", 0)
        return found
