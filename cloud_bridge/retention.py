"""The running node's retention: every INTERVAL_S it deletes history older than [bridge] allows.

Final ledger rows the edge confirmed, unchanged for `intent_retention`, and audit rows older than
`audit_retention` (operator_api.purge, as `cloud-bridge intents purge` does). Live rows, results an
edge has not confirmed, and rows whose intent is younger than `max_intent_age` (a copy of it would be
admitted again: a USB bundle imported twice) are never deleted. Every node runs it; the deletes are idempotent.
Its bounds are in the store's time (`SqlIntents.store_now`), as `cloud-bridge intents purge`'s: a node whose
clock was a day ahead of the others deleted, every hour, rows that they would still admit a copy of, which then
ran a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

from cloud_bridge import operator_api
from cloud_bridge.errors import BridgeError
from cloud_bridge.intent_sql import SqlIntents
from cloud_bridge.own_threads import own_thread

logger = logging.getLogger(__name__)

INTERVAL_S = 3600.0
FIRST_S = 60.0  # the first run, after the node has settled


class Retention:
    """Deletes old history periodically while the node runs."""

    def __init__(
        self,
        intents: SqlIntents,
        *,
        intent_age: float,
        audit_age: float,
        max_intent_age: float,
        clock: Callable[[], float] | None = None,
        interval: float = INTERVAL_S,
        first: float = FIRST_S,
    ) -> None:
        self._intents = intents
        self._intent_age = intent_age
        self._audit_age = audit_age
        self._max_intent_age = max_intent_age
        self._clock = clock  # None: the store's clock
        self._interval = interval
        self._first = first
        self._task: asyncio.Task[None] | None = None
        self._stopping = threading.Event()  # a purge under way ends after its transaction (SQLite: paced)

    async def run_once(self) -> operator_api.PurgeResult:
        done = await own_thread(self._purge)
        if done.intents or done.audit:
            logger.info("retention: deleted %d final intents and %d audit rows", done.intents, done.audit,
                        extra={"code": "retention"})  # fmt: skip
        return done

    def _purge(self) -> operator_api.PurgeResult:
        now = self._intents.store_now() if self._clock is None else self._clock()
        return operator_api.purge(
            self._intents, intents_age=self._intent_age, audit_age=self._audit_age, now=now,
            max_intent_age=self._max_intent_age, stop=self._stopping,
        )  # fmt: skip

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        await asyncio.sleep(self._first)
        while True:
            try:
                await self.run_once()
            except BridgeError as exc:
                logger.warning("retention could not purge: %s", exc.detail, extra={"code": exc.code})
            await asyncio.sleep(self._interval)
