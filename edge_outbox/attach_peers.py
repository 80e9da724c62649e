"""Attach mode: notice another outbox attached to the same broker, which takes every intent too.

Each outbox subscribes to outbox/+/+, so two on one broker (a second site install, a copied config) each take,
store and send every intent: each is executed twice, once per device, and nothing said so. On each connection
an outbox publishes a hello (QoS 0, not retained) on PEER_TOPIC, under outbox/+/+ so no other subscription or
ACL to read is needed, and its app level `.attach` is no app's (an app name starts with a letter or digit).
An outbox that hears another's hello names it and answers once per connection, so both name each other: the
one attached first hears the newcomer's hello, and the newcomer its answer. Pure: `Peers.heard` decides what
to log and what to send, and `greet` does it for edge_outbox.attach.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import orjson

from edge_outbox.attach_link import Link
from edge_outbox.intake_rules import TOPIC_ROOT
from intent_contract import json_bounded
from intent_contract.errors import DecodeError
from intent_contract.logs import LogThrottle, left_out

log = logging.getLogger("edge_outbox.attach")  # the attach client's lines, under its name

PEER_TOPIC = f"{TOPIC_ROOT}/.attach/hello"
MAX_HELLO_BYTES = 1000
PEER_LOG_INTERVAL = 10.0  # seconds between lines naming other outboxes: anyone may publish a hello
ANSWERED_MAX = 16  # outboxes answered on one connection; past it no more are (a flood of forged hellos)


def hello(client_id: str, *, answer: bool) -> bytes:
    """The payload of the PUBLISH (QoS 0, on PEER_TOPIC) saying that `client_id` is attached; an answer is not
    answered."""
    return orjson.dumps({"attached": client_id, "answer": answer})


class Heard(NamedTuple):
    """What to do about a hello: name `peer` (None: nothing to say), and send `answer` (a hello's payload; None:
    nothing)."""

    peer: str | None
    not_logged: int
    answer: bytes | None


@dataclass(slots=True)
class Peers:
    """The other outboxes heard on one broker, for one outbox attached as `client_id`."""

    client_id: str
    _throttle: LogThrottle = field(default_factory=lambda: LogThrottle(PEER_LOG_INTERVAL))
    _answered: set[str] = field(default_factory=set)

    def connected(self) -> None:
        """A new connection: each outbox heard on it is answered again."""
        self._answered.clear()

    def heard(self, raw: bytes, now: float) -> Heard:
        """A hello on PEER_TOPIC (not a retained copy); our own comes back to us and is no peer."""
        try:
            doc = json_bounded.loads(raw, max_bytes=MAX_HELLO_BYTES)
        except DecodeError:
            return Heard(None, 0, None)
        peer = doc.get("attached") if isinstance(doc, dict) else None
        if not isinstance(peer, str) or peer == self.client_id:
            return Heard(None, 0, None)
        answer = None
        if doc.get("answer") is not True and peer not in self._answered and len(self._answered) < ANSWERED_MAX:
            self._answered.add(peer)
            answer = hello(self.client_id, answer=True)
        not_logged = self._throttle.allow(now)
        return Heard(None if not_logged is None else peer, not_logged or 0, answer)


def greet(peers: Peers, link: Link, raw: bytes) -> None:
    """Another outbox says it is attached: name it, and answer so it names us."""
    heard = peers.heard(raw, time.monotonic())
    if heard.peer is not None:
        log.error(
            "another edge outbox is attached to this broker as %r: each outbox takes every intent, so each is "
            "sent twice (once by each); attach one outbox per broker%s",
            heard.peer,
            left_out(heard.not_logged),
        )
    if heard.answer is not None and not link.writer.is_closing():
        link.writer.write(link.wire.publish(PEER_TOPIC, heard.answer, 0, None))
