"""The revocation watcher: which devices are revoked, kept fresh from the registry, and their sessions closed.

`devices revoke` (any process, any node) bumps a counter in the registry; each node polls it and, when
it moved, reads the revoked ids again and drops every connected device among them. The executor reads
the same set to skip a revoked device's queued work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from cloud_bridge.errors import BridgeError
from cloud_bridge.own_threads import own_thread
from cloud_bridge.registry import Registry

logger = logging.getLogger(__name__)


class RevocationWatcher:
    """Polls the registry's revocation counter every `poll` seconds; drops connected revoked devices."""

    def __init__(
        self,
        registry: Registry,
        poll: float,
        *,
        connected: Callable[[], list[str]],
        drop: Callable[[str], Awaitable[bool]],
    ) -> None:
        self._registry = registry
        self._poll = poll
        self._connected = connected
        self._drop = drop
        self._task: asyncio.Task[None] | None = None
        # Ids of revoked devices, refreshed by the watcher (the executor skips their queued work).
        self.revoked: frozenset[str] = frozenset()

    async def start(self) -> None:
        """Read the revoked ids, then watch for more."""
        # Counter first, then the ids: a revocation in between is seen again by the watcher.
        counter = await own_thread(self._registry.revocation_counter)
        self.revoked = frozenset(await own_thread(self._registry.revoked_ids))
        self._task = asyncio.create_task(self._watch(counter), name="revocation-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self, last: int) -> None:
        while True:
            await asyncio.sleep(self._poll)
            try:
                counter = await own_thread(self._registry.revocation_counter)
                if counter != last:
                    self.revoked = frozenset(await own_thread(self._registry.revoked_ids))
                    last = counter
            except BridgeError:
                logger.exception("revocation watcher cannot read the registry")
            # Every poll, not only when the counter moved: a CONNECT whose revocation check came before the
            # revocation can be accepted after the poll that saw it (its signature and replay checks take
            # their time), and it must not stay connected.
            for device_id in self._connected():
                if device_id in self.revoked:
                    await self._drop(device_id)
