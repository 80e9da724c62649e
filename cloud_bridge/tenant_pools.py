"""The executor's slot pools, and how rows are claimed for them fairly between tenants.

A pool is one integration's slots (its `concurrency`): the vendor's integration of a kind, shared by
every tenant without its own, or a tenant's own, that tenant's alone. `Pools` is built from the
configured integrations (a reload builds a new one); `Claims` claims rows for a pool: a tenant's pool
takes that tenant's rows, a vendor pool's free slots are handed out by `fair_share` between the
tenants with work waiting (read from the store only when stale) and claimed tenant by tenant.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cloud_bridge.fair_share import FairRound, Shares, WaitingTenants, rotated
from cloud_bridge.integrations.base import Integration
from cloud_bridge.ledger import Ledger, LedgerEntry
from intent_contract.names import KINDS

DEFAULT_CONCURRENCY = 4
ORPHAN_BATCH = 100
# On a store shared by several nodes, a row of a kind this node has no integration for is failed
# (no_integration) only once it has been due this long: during a rolling reload or restart that adds an
# integration, the nodes not yet reloaded took every queued row of the new kind at once and failed it for
# good, while the reloaded ones would have run it a moment later.
SHARED_ORPHAN_GRACE = 300.0
VENDOR = ""  # the owner of the vendor's pools (a tenant name is never empty)
_ORPHANS = ""  # the key of the look for rows no integration runs (a kind name is never empty)
Pool = tuple[str, str]  # (kind, owner): the slots of one integration


def concurrency(integration: Integration) -> int:
    """The integration's slots; ValueError unless a positive int."""
    value = getattr(integration, "concurrency", DEFAULT_CONCURRENCY)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"integration concurrency must be a positive int, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Pools:
    """Every pool with its integration and slots; the tenants owning each kind; kinds nobody runs."""

    integrations: Mapping[Pool, Integration]
    slots: Mapping[Pool, int]
    owners: Mapping[str, frozenset[str]]  # kind -> tenants with their own integration of it
    orphans: tuple[str, ...]  # kinds without a vendor integration: failed/no_integration (unless owned)
    shares: Shares = field(default_factory=Shares)

    @classmethod
    def build(
        cls,
        integrations: Mapping[str, Integration],
        tenants: Mapping[str, Mapping[str, Integration]] | None = None,
        shares: Shares | None = None,
    ) -> Pools:
        """From the vendor's integrations (by kind) and the tenants' own (by tenant, then kind)."""
        own = tenants or {}
        pools: dict[Pool, Integration] = {(kind, VENDOR): i for kind, i in integrations.items()}
        pools.update({(kind, t): i for t, by_kind in own.items() for kind, i in by_kind.items()})
        slots = {pool: concurrency(i) for pool, i in pools.items()}
        owners = {k: frozenset(t for t, by_kind in own.items() if k in by_kind) for k in KINDS}
        orphans = tuple(k for k in KINDS if (k, VENDOR) not in pools)
        return cls(pools, slots, owners, orphans, shares or Shares())

    def pool_of(self, kind: str, tenant: str) -> Pool | None:
        """The pool that runs `tenant`'s rows of `kind`: its own integration's, else the vendor's; None: no pool."""
        for pool in ((kind, tenant), (kind, VENDOR)):
            if pool in self.integrations:
                return pool
        return None


Ready = dict[Pool, deque[tuple[LedgerEntry, Pools]]]  # rows claimed ahead, by pool, with the pools of their claim


def rehomed(ready: Ready, pools: Pools) -> Ready:
    """Rows claimed ahead (not started) under new `pools` (a reload): each in the pool that now runs its tenant's
    kind, on the new integrations, in the order claimed; so a rotated key or a tenant's new account serves them.
    A row no pool runs any more stays where it was, on the integration of its claim."""
    moved: Ready = {}
    for pool, rows in ready.items():
        for entry, claimed_in in rows:
            now = pools.pool_of(entry.kind, entry.tenant)
            where, on = (pool, claimed_in) if now is None else (now, pools)
            moved.setdefault(where, deque()).append((entry, on))
    return moved


class Claims:
    """Claims rows for pools: a tenant's own pool its tenant's, a vendor pool's shared fairly."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        owner: str,
        lease: float,
        now: Callable[[], float],
        idle_poll: float,
        orphan_grace: float = 0.0,
    ) -> None:
        self._ledger = ledger
        self._owner = owner
        self._lease = lease
        self._orphan_grace = orphan_grace
        self._now = now
        self._waiting = WaitingTenants(max_age=idle_poll)
        self._turn = 0

    def woken(self) -> None:
        """New work may wait (an admission, a reload): the waiting tenants are read again."""
        self._waiting.woken(self._now())

    async def fill(
        self, pools: Pools, pool: Pool, free: int, running: Mapping[str, int], held: int | None = None
    ) -> tuple[list[LedgerEntry], bool]:
        """Claim up to `free` rows for `pool`, whose jobs now run per tenant as `running`, of the `held` it may
        hold at once (its slots unless given: the executor holds rows claimed ahead too).

        Returns the rows and whether the pool may have more due now (filled, or slots left by caps).
        """
        kind, owner = pool
        if owner != VENDOR:
            rows = await self.claim([kind], free, owner)
            return rows, len(rows) == free
        now = self._now()
        if self._waiting.stale(kind, now):
            self._waiting.read(kind, await self._ledger.waiting_tenants([kind], now), now)
        owners = pools.owners.get(kind, frozenset())
        waiting = [t for t in self._waiting.tenants(kind) if t not in owners]
        self._turn += 1
        fair = FairRound(free, held or pools.slots[pool], dict(running), rotated(waiting, self._turn), pools.shares)
        claimed: list[LedgerEntry] = []
        while grant := fair.next_grant():
            for tenant, n in grant.items():
                rows = await self.claim([kind], n, tenant)
                fair.claimed(tenant, n, len(rows))
                if len(rows) < n:
                    self._waiting.drop(kind, tenant)
                claimed += rows
        return claimed, fair.free <= 0 or fair.capped

    async def orphans(self, pools: Pools) -> list[LedgerEntry]:
        """Rows of kinds no integration runs here (not those of a tenant that brings its own), due for at
        least `orphan_grace` seconds (another node may run them meanwhile: see SHARED_ORPHAN_GRACE).

        They end at once, so they are looked for after an admission, or idle_poll after the last look
        found none; [] between.
        """
        now = self._now()
        if not pools.orphans or self._waiting.fresh(_ORPHANS, now):
            return []
        kinds = list(pools.orphans)
        due_by = now - self._orphan_grace
        if not any(pools.owners.get(k) for k in kinds):
            claimed = await self.claim(kinds, ORPHAN_BATCH, due_by=due_by)
        else:
            claimed = []
            for tenant in await self._ledger.waiting_tenants(kinds, now):
                theirs = [k for k in kinds if tenant not in pools.owners.get(k, frozenset())]
                if theirs and len(claimed) < ORPHAN_BATCH:
                    claimed += await self.claim(theirs, ORPHAN_BATCH - len(claimed), tenant, due_by=due_by)
        if len(claimed) < ORPHAN_BATCH:
            self._waiting.checked(_ORPHANS, now)
        return claimed

    async def claim(
        self, kinds: list[str], limit: int, tenant: str | None = None, *, due_by: float | None = None
    ) -> list[LedgerEntry]:
        now = self._now()
        return await self._ledger.claim(
            kinds, limit, now, owner=self._owner, lease=self._lease, tenant=tenant, due_by=due_by
        )
