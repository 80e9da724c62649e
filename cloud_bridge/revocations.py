"""The revocation watcher: which devices are revoked, kept fresh from the registry, and the sessions closed of
revoked devices and of keys that were replaced.

`devices revoke` (any process, any node) and a key's promotion (a rotated device's new key used for the first
time, on any node) bump a counter in the registry; each node polls it and, when it moved, reads the revoked
ids again and drops every connected device among them, and checks the key every session it holds opened
with: a session whose key no longer authenticates its device (the old key of a rotation, maybe a stolen one)
is dropped, and the new key's session stays. The executor reads the revoked set to skip a revoked device's
queued work.

On a SQLite store, whose registry and ledger are separate files, the watcher also settles each newly revoked
device's final results that no edge will ever confirm (`settle_results`), so that retention deletes them; on
PostgreSQL `devices revoke` does it in its own transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from cloud_bridge.errors import BridgeError
from cloud_bridge.ledger import Ledger
from cloud_bridge.own_threads import own_thread
from cloud_bridge.registry import Registry
from cloud_bridge.store_loss import StoreLoss
from intent_contract.logs import FailureEpisode

logger = logging.getLogger(__name__)


def sessions_to_end(
    sessions: dict[str, str], keys: dict[str, tuple[str, ...]]
) -> tuple[dict[str, str], dict[str, str]]:
    """(sessions whose key still authenticates their device, sessions to end): `keys` are the registry's
    `active_keys` of the sessions' devices."""
    good = {d: k for d, k in sessions.items() if k in keys.get(d, ())}
    return good, {d: k for d, k in sessions.items() if d not in good}


def settle_results(ledger: Ledger) -> Callable[[str], Awaitable[int]]:
    """Confirm a revoked device's final results: it can never connect again and a revoked device's receipt
    carries none, and an unconfirmed result is never deleted. A result that becomes final after this read is
    confirmed by its finish (`job_run`), which reads the watcher's set, updated before this runs."""

    async def settle(device_id: str) -> int:
        return await ledger.confirm(device_id, [ack.id for ack in await ledger.unconfirmed(device_id)])

    return settle


class RevocationWatcher:
    """Polls the registry's revocation counter every `poll` seconds; drops connected revoked devices and
    sessions opened with a key that was replaced."""

    def __init__(
        self,
        registry: Registry,
        poll: float,
        *,
        sessions: Callable[[], dict[str, str]],
        drop: Callable[[str, str | None], Awaitable[bool]],
        settle: Callable[[str], Awaitable[int]] | None = None,
        lost: StoreLoss | None = None,
    ) -> None:
        self._registry = registry
        self._lost = lost  # told of each poll: a node cut off from a shared store lets its devices go
        self._poll = poll
        self._sessions = sessions  # device id -> the key its session opened with
        self._drop = drop  # (device id, None: whatever session it has; a key: only the session of that key)
        self._task: asyncio.Task[None] | None = None
        # Ids of revoked devices, refreshed by the watcher (the executor skips their queued work).
        self.revoked: frozenset[str] = frozenset()
        # Sessions whose key was found active since the counter last moved: checked again only when it moves.
        self._checked: dict[str, str] = {}
        self._settle = settle  # (device id): settles its results; None where the revocation itself does
        self._unsettled: set[str] = set()  # revoked devices whose results are not settled yet
        # A registry or ledger refusing every poll (a full disk) is a line when it starts and when it ends.
        self._reads = FailureEpisode(logger, "revocation watcher cannot read the registry")
        self._key_reads = FailureEpisode(logger, "revocation watcher cannot read the devices' keys")
        self._settles = FailureEpisode(logger, "revocation watcher cannot settle revoked devices' results")

    async def start(self) -> None:
        """Read the revoked ids, then watch for more."""
        # Counter first, then the ids: a revocation in between is seen again by the watcher.
        counter = await own_thread(self._registry.revocation_counter)
        self.revoked = frozenset(await own_thread(self._registry.revoked_ids))
        if self._settle is not None:  # those revoked while this node was down too (settled in the watcher)
            self._unsettled = set(self.revoked)
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
                    revoked = frozenset(await own_thread(self._registry.revoked_ids))
                    if self._settle is not None:
                        self._unsettled |= revoked - self.revoked
                    self.revoked = revoked
                    self._checked.clear()  # a key may have ended: every session is checked again
                    last = counter
                self._reads.worked()
                if self._lost is not None:
                    self._lost.worked()
            except BridgeError as exc:
                self._reads.failed(exc)
                if self._lost is not None:
                    await self._lost.failed()
            await self._settle_unsettled()
            # Every poll, not only when the counter moved: a CONNECT whose revocation check came before the
            # revocation can be accepted after the poll that saw it (its signature and replay checks take
            # their time), and it must not stay connected.
            for device_id in self._sessions():
                if device_id in self.revoked:
                    await self._drop(device_id, None)
            await self._check_keys()

    async def _settle_unsettled(self) -> None:
        """Settle the results of devices revoked since the last poll; one that fails is tried at the next."""
        if self._settle is None:
            return
        for device_id in sorted(self._unsettled):
            try:
                settled = await self._settle(device_id)
            except BridgeError as exc:
                self._settles.failed(exc)
                return
            self._settles.worked()
            self._unsettled.discard(device_id)
            if settled:
                logger.info("results of revoked device %s settled: %d", device_id, settled,
                            extra={"device_id": device_id, "code": "device_revoked"})  # fmt: skip

    async def _check_keys(self) -> None:
        """End the sessions whose key no longer authenticates their device. A session not checked since the
        counter last moved is checked now: so is one whose CONNECT read the key before its promotion and was
        accepted after the poll that saw the promotion."""
        sessions = self._sessions()
        unchecked = {d: k for d, k in sessions.items() if self._checked.get(d) != k and d not in self.revoked}
        self._checked = {d: k for d, k in self._checked.items() if sessions.get(d) == k}
        if not unchecked:
            return
        try:
            keys = await own_thread(self._registry.active_keys, list(unchecked))
            self._key_reads.worked()
        except BridgeError as exc:
            self._key_reads.failed(exc)
            return
        good, ended = sessions_to_end(unchecked, keys)
        self._checked.update(good)
        for device_id, key in ended.items():
            await self._drop(device_id, key)
