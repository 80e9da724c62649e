"""Attach mode: replay requests (`{"after": SEQ}` on outbox/{app}/replay) that came through the site broker,
served in turn by publishing the app's stored statuses after SEQ to the broker again (edge_outbox.attach).

Through a broker they go to every client subscribed to them, not only to the one that asked. Before, the request
was taken as an intent of the unknown kind `replay`, and the app had a rejection for it, not its statuses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from edge_outbox.attach_link import Link
from edge_outbox.db import StatusEvent
from edge_outbox.intake_rules import replay_after
from intent_contract.logs import LogThrottle, left_out

log = logging.getLogger("edge_outbox.attach")  # the attach client's lines, under its name

REPLAY_LOG_INTERVAL = 10.0  # seconds between lines about replay requests dropped
REPLAY_APPS = 1024  # apps whose replay requests wait at once; a request for one more is dropped (and logged)

ReadAppStatuses = Callable[[str, int, int], Awaitable[list[StatusEvent]]]  # (app, after seq, limit), oldest first


class Replays:
    """The replay requests under way, oldest first."""

    def __init__(self, read_app_statuses: ReadAppStatuses | None) -> None:
        self._read = read_app_statuses
        self._pending: dict[str, tuple[int, int]] = {}  # app -> (after seq, sent so far)
        self._log = LogThrottle(REPLAY_LOG_INTERVAL)  # requests dropped: an app may send them in a loop

    def __bool__(self) -> bool:
        return bool(self._pending)

    def asked(self, app: str, raw: bytes) -> bool:
        """A request of `app`'s: whether there is one more to serve (else it was dropped, and logged)."""
        after = replay_after(raw)
        if after is None:
            if (not_logged := self._log.allow(time.monotonic())) is not None:
                message = 'a replay request for %s is {"after": SEQ}, not %r: dropped%s'
                extra = {"app": app, "not_logged": not_logged}
                log.warning(message, app, raw[:100], left_out(not_logged), extra=extra)
            return False
        if app in self._pending:
            after = min(after, self._pending[app][0])  # the earlier request is not done: serve both
        elif len(self._pending) >= REPLAY_APPS or self._read is None:
            if (not_logged := self._log.allow(time.monotonic())) is not None:
                log.warning("a replay request for %s is dropped: %d apps' requests are under way%s",
                            app, len(self._pending), left_out(not_logged),
                            extra={"app": app, "not_logged": not_logged})  # fmt: skip
            return False
        self._pending[app] = (after, 0)
        return True

    async def serve(self, link: Link, room: int) -> None:
        """Publish the next part of the oldest request, at most `room` statuses."""
        assert self._read is not None
        app, (after, count) = next(iter(self._pending.items()))
        events = await self._read(app, after, room)
        if link.writer.is_closing():
            return  # the request stays: it goes on on the next connection
        link.writer.write(link.publish_statuses(events, replayed=True)[0])
        after = events[-1].seq if events else after
        if len(events) < room:
            del self._pending[app]
            log.info("the statuses of %s were asked for again: %d published", app, count + len(events),
                     extra={"app": app})  # fmt: skip
        else:
            self._pending[app] = (after, count + len(events))
