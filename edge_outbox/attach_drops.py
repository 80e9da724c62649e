"""Attach mode: messages the site broker dropped over its queue limits, as it counts them.

Mosquitto queues at most `max_queued_messages` (1000 by default) and `max_queued_bytes` for a client that is away
or behind, drops the rest, and has already acknowledged each to its publisher. For the outbox those are intents an
app had its PUBACK for and that never arrive: nothing in MQTT says so. Mosquitto counts them, for all its clients
together, on $SYS/broker/publish/messages/dropped (retained, every `sys_interval`); the outbox subscribes to it at
QoS 0 and names the count it finds at start and each increase. A broker that has no such topic, or whose ACL keeps
it from the outbox, sends nothing and nothing is said. Pure: `BrokerDrops.heard` decides what to log.
"""

from __future__ import annotations

import logging

log = logging.getLogger("edge_outbox.attach")  # the attach client's lines, under its name

DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
DROPS_SUBSCRIBE_ID = 2  # the SUBSCRIBE to DROPPED_TOPIC, after the intake's (attach_link.SUBSCRIBE_IDS)
_WHAT = (
    "messages it had to queue for a client away or behind, over Mosquitto's max_queued_messages or "
    "max_queued_bytes; if any were for this outbox, they are intents the apps had their PUBACK for and that are "
    "lost: set max_queued_messages 0 (docs/durability.md)"
)


class BrokerDrops:
    """The broker's count of dropped messages, as last heard (None: not yet, since the outbox started)."""

    def __init__(self) -> None:
        self.count: int | None = None

    def heard(self, raw: bytes) -> None:
        try:
            count = int(raw)
        except ValueError:
            return
        last, self.count = self.count, count
        if count and (last is None or count < last):  # at start, or the broker restarted (its count starts over)
            log.warning("the site broker has dropped %d messages since it started (%s)", count, _WHAT)
        elif last is not None and count > last:
            log.error("the site broker dropped %d more messages (%s)", count - last, _WHAT)
