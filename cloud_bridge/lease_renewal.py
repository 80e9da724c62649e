"""The executor's lease renewals: the rows it holds (jobs running, rows claimed ahead) kept from other claims.

A renewal the store refuses (a full disk, an outage) is owed: the executor claims nothing until one goes
through (`owed`), since a claim first would take its own lapsed rows, whose results may wait to be recorded
(job_run tries them until the store takes them): on a full disk each such call ran twice once space came back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from cloud_bridge.errors import BridgeError
from cloud_bridge.ledger import Ledger, LedgerEntry

logger = logging.getLogger("cloud_bridge.executor")


class LeaseRenewal:
    """Renews leases for `lease` seconds from `now()`; `owed` while the last renewal failed."""

    def __init__(self, ledger: Ledger, lease: float, now: Callable[[], float]) -> None:
        self._ledger = ledger
        self._lease = lease
        self._now = now
        self.owed = False

    async def renew(self, held: Sequence[LedgerEntry]) -> bool:
        """Extend the leases of `held`; False when the store failed (logged once until a renewal goes through)."""
        try:
            if held:
                await self._ledger.renew(held, self._now() + self._lease)
        except Exception as exc:
            if not self.owed:
                ours = isinstance(exc, BridgeError)  # a store failing; anything else is a bug: its traceback
                code = exc.code if isinstance(exc, BridgeError) else type(exc).__name__
                logger.error("could not renew the leases of %d running jobs (%s); no claims until they are",
                             len(held), code, extra={"code": code}, exc_info=not ours)  # fmt: skip
            self.owed = True
            return False
        if self.owed:
            logger.warning("leases renewed again; claiming again")
            self.owed = False
        return True
