"""Attach mode: what a connection to the site broker that ended had taken last, for the copies the broker sends
again on the next (edge_outbox.attach)."""

from __future__ import annotations

import asyncio
from typing import Any

from edge_outbox.attach_link import Link
from intent_contract import mqtt_packets as p


class Carried:
    """Messages of a connection that ended, by packet id: those taken and not acknowledged, and the last ones
    acknowledged (ACKED_KEPT), whose PUBACK the broker may not have read.

    The broker sends such a message again on the session's next connection, under the same packet id with DUP=1
    (it gives the id to no other message before it has our PUBACK [MQTT-2.3.1-2]); the copy is answered by the
    commit already made or under way, not taken as one more intent. Before, every intent without an app's id that
    was taken and not acknowledged when the link broke (a broker restart, a network cut: up to MAX_UNCOMMITTED
    while commits were held), or acknowledged as Mosquitto stopped, was stored twice and sent twice. A copy whose
    first commit failed is taken again. A SIGKILLed outbox keeps nothing of this: there an app's `id` is what makes
    a copy a duplicate."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[int, asyncio.Future[Any]]] = {}  # packet id -> (digest, commit)

    def __bool__(self) -> bool:
        return bool(self._by_id)

    def keep(self, link: Link) -> None:
        """What a connection that ended took last. An entry goes when a message comes under its packet id."""
        if link.acked:
            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            for packet_id, digest in link.acked:
                self._by_id[packet_id] = (digest, done)
        for r in link.received:
            if r.packet_id is not None and r.taken is not None:
                self._by_id[r.packet_id] = (hash(r.taken), r.done)

    def forget(self) -> None:
        """The broker has no session for us: it sends nothing again, and its packet ids start over."""
        self._by_id.clear()

    def commit_of(self, packet: p.Publish, taken: tuple[str, bytes, int | None]) -> asyncio.Future[Any] | None:
        """The commit of the message `packet` is a copy of, if it is one."""
        if packet.packet_id is None or (entry := self._by_id.pop(packet.packet_id, None)) is None:
            return None
        digest, done = entry
        if not packet.dup or digest != hash(taken):
            return None
        if done.done() and (done.cancelled() or done.exception() is not None):
            return None  # not stored: take it now
        return done
