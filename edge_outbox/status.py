"""Status messages to apps on `outbox/{app}/status/{id}`, published in commit order.

Stored state changes arrive as events from the store (including those made by ops commands in other
processes); the publisher remembers how far it got in the database, so a restart re-publishes what a
crash may have swallowed (at least once, like everything else here).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from edge_outbox.db import StatusEvent
from edge_outbox.intake_rules import status_topic
from edge_outbox.states import State
from intent_contract.timefmt import format_ms

log = logging.getLogger(__name__)

Sink = Callable[[str, bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class StatusMessage:
    id: str
    app: str
    kind: str
    state: State
    code: str
    detail: str
    at: int  # ms

    @classmethod
    def from_event(cls, event: StatusEvent) -> StatusMessage:
        return cls(event.id, event.app, event.kind, event.state, event.code, event.detail, event.at)

    @property
    def topic(self) -> str:
        return status_topic(self.app, self.id)

    def to_json(self) -> bytes:
        body = {
            "id": self.id,
            "kind": self.kind,
            "state": str(self.state),
            "code": self.code,
            "detail": self.detail,
            "at": format_ms(self.at),
        }
        return json.dumps(body, separators=(",", ":")).encode()


class StatusPublisher:
    """Publishes status messages through a sink (the embedded broker, or the attached one)."""

    def __init__(self, sink: Sink, wanted: Callable[[str], bool] = lambda _topic: True) -> None:
        self._sink = sink
        self._wanted = wanted  # False: no subscriber for this topic, skip it
        self._queue: asyncio.Queue[tuple[StatusMessage, int]] = asyncio.Queue()
        self.published_seq = 0  # highest stored event published
        self.published = 0

    def on_events(self, events: list[StatusEvent]) -> None:
        for event in events:
            self._queue.put_nowait((StatusMessage.from_event(event), event.seq))

    def send(self, message: StatusMessage) -> None:
        """Publish a message that is not a stored state change (a duplicate's status, a full queue)."""
        self._queue.put_nowait((message, 0))

    async def run(self) -> None:
        while True:
            message, seq = await self._queue.get()
            try:
                topic = message.topic
                if self._wanted(topic):
                    await self._sink(topic, message.to_json())
                    self.published += 1
            except Exception:  # a status lost here is re-sent after a restart; never stop the loop
                log.exception("could not publish status of %s", message.id)
            if seq:
                self.published_seq = max(self.published_seq, seq)
            self._queue.task_done()

    async def drain(self) -> None:
        """Wait until everything queued so far has been handed to the sink (callers bound the wait)."""
        await self._queue.join()
