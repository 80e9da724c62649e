"""A node cut off from the shared store lets its devices go, so that they reconnect to a node that reaches it.

On PostgreSQL every node reaches the same store, and a TCP balancer spreads the devices over them; a device's
connection stays on one node until it drops. A node whose own link to the database is cut (a partition, its
host's network, a pooler or proxy on its way) admits nothing: every batch of its devices goes unacked and is sent
again on the same session after the edge's ack timeout, for as long as the cut lasts, while the other nodes reach
the store. A balancer's health check (`/healthz` fails) only stops new connections going there. So once the store
has not answered the node for its lease (the time after which the other nodes take its jobs too), it closes every
device session it holds; their edges reconnect through the balancer, and this node refuses a connect while it
cannot read the registry. The revocation watcher's poll (every `revocation_poll`) is the heartbeat it judges by.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


class StoreLoss:
    """Told of each poll of the store (`worked`, `failed`); past `after` seconds without an answer, every session
    in `sessions()` is dropped (`drop(device_id, None)`), at each failed poll until the store answers again."""

    def __init__(
        self,
        after: float,
        *,
        sessions: Callable[[], list[str]],
        drop: Callable[[str, str | None], Awaitable[bool]],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._after = after
        self._sessions = sessions
        self._drop = drop
        self._monotonic = monotonic
        self._answered = monotonic()  # the last poll the store answered (or the start)
        self._dropped = 0  # sessions closed in this outage

    def worked(self) -> None:
        """The store answered a poll."""
        self._answered = self._monotonic()
        if self._dropped:
            logger.warning("store answers again: devices are taken again (%d sessions were closed while it did not)",
                           self._dropped, extra={"code": "store_back"})  # fmt: skip
            self._dropped = 0

    async def failed(self) -> None:
        """A poll of the store failed: past `after` seconds since its last answer, the sessions held are closed."""
        silent = self._monotonic() - self._answered
        if silent < self._after:
            return
        # Together: each close waits for its connection to end (up to a second), and one after the other a node
        # holding thousands of devices took that many waits, its revocation poll held up meanwhile.
        closed = sum(await asyncio.gather(*(self._drop(device_id, None) for device_id in self._sessions())))
        if closed and not self._dropped:
            logger.warning(
                "the store has not answered for %g s (the lease): %d device sessions closed, for them to reconnect"
                " to a node that reaches it; connects are refused here until it answers",
                self._after, closed, extra={"code": "store_lost"},
            )  # fmt: skip
        self._dropped += closed
