"""The executor's lease renewals: the rows it holds (jobs running, rows claimed ahead) kept from other claims.

A renewal the store refuses (a full disk, an outage) is owed: the executor claims nothing until one goes
through (`owed`), since a claim first would take its own lapsed rows, whose results may wait to be recorded
(job_run tries them until the store takes them): on a full disk each such call ran twice once space came back.

A row claimed ahead waits for a free slot, and its lease may run out meanwhile if this node stalls (SIGSTOP, a
long GC or CPU stall, a VM paused) or its renewals fail: another node then claims it and runs it. So the time
from which each such row's lease is known to run (its claim's, its last renewal's, by this process's monotonic
clock, which runs on through a stall) is kept, and a row not `sure` to be still held is `hold`-checked in the
store before its call starts. Before, a node that went on after a stall longer than its lease started every row
it had claimed ahead, which other nodes had run meanwhile: a second call of each, on any provider.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

from cloud_bridge.errors import BridgeError
from cloud_bridge.ledger import Ledger, LedgerEntry, log_context

logger = logging.getLogger("cloud_bridge.executor")

Key = tuple[str, str, int, int]


def _key(entry: LedgerEntry) -> Key:
    return (entry.device_id, entry.intent_id, entry.attempt, entry.tries)


class LeaseRenewal:
    """Renews leases for `lease` seconds from `now()`; `owed` while the last renewal failed."""

    def __init__(
        self, ledger: Ledger, lease: float, now: Callable[[], float], monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._ledger = ledger
        self._lease = lease
        self._now = now
        self._monotonic = monotonic
        self._since: dict[Key, float] = {}  # rows claimed ahead: when their lease was last set (monotonic)
        self.owed = False

    def claimed(self, entries: Iterable[LedgerEntry], at: float) -> None:
        """`entries` were claimed under a lease set no earlier than `at` (monotonic, read before the claim)."""
        for entry in entries:
            self._since[_key(entry)] = at

    def sure(self, entry: LedgerEntry) -> bool:
        """Whether `entry`'s lease surely has a third of a lease left, so no other node can have taken it."""
        since = self._since.get(_key(entry))
        return since is not None and self._monotonic() < since + self._lease * 2 / 3

    def forget(self, entry: LedgerEntry) -> None:
        self._since.pop(_key(entry), None)

    async def hold(self, entry: LedgerEntry) -> bool:
        """Renew `entry`'s lease before its call starts: False (logged) when another node took it meanwhile, or
        the store cannot say (it is then claimed again once its lease runs out, by any node)."""
        at = self._monotonic()
        try:
            renewed = await self._ledger.renew([entry], self._now() + self._lease)
        except BridgeError as exc:  # the store failing
            logger.warning("%s/%s not started: its lease could not be renewed (%s); it runs once its lease is out",
                           entry.device_id, entry.intent_id, exc.code,
                           extra=log_context(entry, code=exc.code))  # fmt: skip
            return False
        if not renewed:
            logger.warning("%s/%s claimed ahead, not started: its lease ran out while it waited (this node stalled"
                           " or could not renew it) and another node took it", entry.device_id, entry.intent_id,
                           extra=log_context(entry, code="not_held"))  # fmt: skip
            return False
        self._since[_key(entry)] = at
        return True

    async def renew(self, running: Sequence[LedgerEntry], ahead: Sequence[LedgerEntry] = ()) -> bool:
        """Extend the leases of the jobs `running` and the rows claimed `ahead`; False when the store failed
        (logged once until a renewal goes through)."""
        at = self._monotonic()
        until = self._now() + self._lease
        try:
            if running:
                await self._ledger.renew(running, until)
            # Rows claimed ahead are only changed by this node while it holds them: all renewed, or some were
            # taken by another node (a stall); then none counts as renewed here, each is checked at its start.
            renewed = await self._ledger.renew(ahead, until) if ahead else 0
        except Exception as exc:
            if not self.owed:
                ours = isinstance(exc, BridgeError)  # a store failing; anything else is a bug: its traceback
                code = exc.code if isinstance(exc, BridgeError) else type(exc).__name__
                logger.error("could not renew the leases of %d running jobs (%s); no claims until they are",
                             len(running) + len(ahead), code, extra={"code": code}, exc_info=not ours)  # fmt: skip
            self.owed = True
            return False
        keys = {_key(entry) for entry in ahead}
        self._since = {key: since for key, since in self._since.items() if key in keys or since >= at}
        if ahead and renewed == len(ahead):
            self._since.update((key, max(at, self._since.get(key, at))) for key in keys)
        if self.owed:
            logger.warning("leases renewed again; claiming again")
            self.owed = False
        return True
