"""A connection's answers (PUBACK, SUBACK, ...), written in the order their packets came [MQTT-4.6.0-2], each
once what it waits for is done (the intake's commit, a persistent session's save)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edge_outbox.errors import StorageError

log = logging.getLogger(__name__)

MAX_PENDING_ACKS = 1000  # publishes read but not yet answered; reading pauses beyond (backpressure)
CLOSE_GRACE_S = 2.0  # how long a closed connection's client has to read what is still written to it


def shut(writer: asyncio.StreamWriter) -> None:
    """Close `writer` once what was written to it is sent, and cut it after CLOSE_GRACE_S if its client does not
    read that. asyncio closes only once the buffer is sent: a client that stopped reading (hung, or gone without
    a word) kept its connection for ever, and the app back on its client id waited for it without a CONNACK."""
    writer.close()
    transport = writer.transport
    if transport.get_write_buffer_size():
        asyncio.get_running_loop().call_later(CLOSE_GRACE_S, transport.abort)


@dataclass(slots=True)
class _Answer:
    """An answer written in arrival order once `ready` (the commit) is done."""

    ready: asyncio.Future[Any] | None
    data: bytes | Callable[[object], bytes]  # or made from the commit's result (an MQTT 5 reason code)
    then: Callable[[], None] | None = None


class Answers:
    """The answers of one connection, written to `writer` by `run()`. When what an answer waits for fails, the
    answers end there: `failed` is called (to close the client) with the StorageError, or None after the
    traceback of anything else is logged with the client's `name()`."""

    def __init__(
        self, writer: asyncio.StreamWriter, name: Callable[[], str], failed: Callable[[StorageError | None], None]
    ) -> None:
        self._writer = writer
        self._name = name
        self._failed = failed
        self._answers: deque[_Answer] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def add(
        self,
        ready: asyncio.Future[Any] | None,
        data: bytes | Callable[[object], bytes],
        then: Callable[[], None] | None = None,
    ) -> None:
        """Answer with `data` once `ready` is done, after every answer added before; then call `then`."""
        self._answers.append(_Answer(ready, data, then))
        self._ready.set()

    async def room(self) -> None:
        """Return once fewer than MAX_PENDING_ACKS answers wait: the reader pauses while they do."""
        if len(self._answers) >= MAX_PENDING_ACKS:
            self._room.clear()
            await self._room.wait()

    async def run(self) -> None:
        """Write answers in arrival order, each once its commit is done.

        The answers done together go out in one write: a send() per PUBACK was a sixth of the loop's time
        under load (bench/findings.md F29)."""
        answers = self._answers
        out = bytearray()
        while True:
            await self._ready.wait()
            self._ready.clear()
            while answers:
                answer = answers[0]
                result: object = None
                if answer.ready is not None:
                    if out and not answer.ready.done():
                        out = self._write(out)  # what is done does not wait for what is not
                    try:
                        result = await answer.ready
                    except StorageError as exc:  # a session's save on a full disk: said without a traceback
                        self._write(out)
                        self._failed(exc)
                        return
                    except Exception:
                        self._write(out)
                        log.exception("intake failed for client %s: closing it unanswered", self._name())
                        self._failed(None)
                        return
                answers.popleft()
                out += answer.data if isinstance(answer.data, bytes) else answer.data(result)
                if answer.then is not None:
                    out = self._write(out)  # before what `then` sends (a SUBACK before its retained messages)
                    answer.then()
                if len(answers) < MAX_PENDING_ACKS // 2:
                    self._room.set()
            out = self._write(out)
            await self._writer.drain()

    def _write(self, data: bytearray) -> bytearray:
        """Write `data` if there is any; a new buffer for what follows (the transport may keep this one)."""
        if not data:
            return data
        self._writer.write(data)
        return bytearray()
