"""Fair shares of an integration's slots between tenants, as pure decisions.

The executor runs at most `concurrency` jobs of an integration at once (its slots). The vendor's own
integrations are shared by every tenant that does not bring its own, so a tenant with a large
backlog would take every slot if rows were claimed oldest first across tenants. Instead, each time
slots are free, `allocate` says how many rows each tenant with due work may claim: the slots are
handed out one by one to the tenant furthest below its weighted share (fewest running jobs per unit
of weight), never past the tenant's cap. A tenant whose claim comes back short has nothing more due
and drops out of the round (`FairRound`); its slots go to the others.

Nothing here awaits, reads the clock or touches the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["DEFAULT_SHARE", "FairRound", "Share", "Shares", "WaitingTenants", "allocate", "rotated"]


@dataclass(frozen=True, slots=True)
class Share:
    """One tenant's claim on shared slots: `weight` relative to the others, at most `max_share` of them."""

    weight: float = 1.0
    max_share: float = 1.0

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError("weight must be positive")
        if not 0 < self.max_share <= 1:
            raise ValueError("max_share must be within (0, 1]")

    def cap(self, slots: int) -> int:
        """The most of `slots` this tenant may hold at once: its fraction, rounded down, at least one."""
        return max(1, int(slots * self.max_share + 1e-9))


DEFAULT_SHARE = Share()


@dataclass(frozen=True, slots=True)
class Shares:
    """Every configured tenant's share; a tenant not listed has `default`."""

    by_tenant: Mapping[str, Share] = field(default_factory=dict)
    default: Share = DEFAULT_SHARE

    def of(self, tenant: str) -> Share:
        return self.by_tenant.get(tenant, self.default)


def allocate(
    free: int, slots: int, running: Mapping[str, int], waiting: Sequence[str], shares: Shares
) -> dict[str, int]:
    """How many of `free` slots (of a pool of `slots`) each tenant in `waiting` may claim now.

    Each slot goes to the waiting tenant with the fewest (running + granted) jobs per unit of weight
    that is still under its cap; ties go to the tenant earlier in `waiting` (callers rotate it, see
    `rotated`). Slots no tenant may take stay free. Tenants granted nothing are left out.
    """
    if free < 0 or slots < 1:
        raise ValueError("need free >= 0 and slots >= 1")
    held = {t: running.get(t, 0) for t in waiting}
    caps = {t: shares.of(t).cap(slots) for t in waiting}
    weights = {t: shares.of(t).weight for t in waiting}
    order = {t: i for i, t in enumerate(dict.fromkeys(waiting))}
    granted: dict[str, int] = {}
    for _ in range(free):
        open_ = [t for t in order if held[t] < caps[t]]
        if not open_:
            break
        best = min(open_, key=lambda t: (held[t] / weights[t], order[t]))
        held[best] += 1
        granted[best] = granted.get(best, 0) + 1
    return granted


def rotated(tenants: Iterable[str], turn: int) -> list[str]:
    """`tenants` sorted, starting `turn` places in: who goes first on ties changes from fill to fill."""
    ordered = sorted(set(tenants))
    if not ordered:
        return []
    start = turn % len(ordered)
    return ordered[start:] + ordered[:start]


@dataclass(slots=True)
class FairRound:
    """One fill of one pool: grants, claims that come back short, until the slots or the tenants run out.

    Use: `while (grant := round.next_grant())`: claim `n` rows for each tenant, report each with
    `claimed(tenant, asked, got)`. `capped` says whether slots stayed free only because of caps
    (more work is due, so the caller must not sleep until the next due time).
    """

    free: int
    slots: int
    running: dict[str, int]
    waiting: list[str]
    shares: Shares
    capped: bool = False

    def next_grant(self) -> dict[str, int]:
        """The next grants; empty when every slot is taken or nobody waits (or may take one)."""
        if self.free <= 0 or not self.waiting:
            return {}
        grant = allocate(self.free, self.slots, self.running, self.waiting, self.shares)
        if not grant:
            self.capped = True
        return grant

    def claimed(self, tenant: str, asked: int, got: int) -> None:
        """`got` of the `asked` rows were claimed for `tenant`; fewer means it has nothing more due."""
        if not 0 <= got <= asked:
            raise ValueError("claimed between 0 and the rows asked for")
        self.running[tenant] = self.running.get(tenant, 0) + got
        self.free -= got
        if got < asked and tenant in self.waiting:
            self.waiting.remove(tenant)


@dataclass(slots=True)
class WaitingTenants:
    """Which tenants have work waiting, per kind, as last read from the store; read again only when stale.

    Reading the list on every fill cost a query per finished job. It goes stale when work may have
    come in (`woken`: an admission here or on another node), when it is empty (nothing known to wait:
    a tenant's retry may have come due), and `max_age` seconds after it was read (lapsed leases of
    other nodes). A tenant whose claim came back short is dropped until the next read.
    """

    max_age: float
    _read: dict[str, tuple[float, list[str]]] = field(default_factory=dict)
    _woken: float = float("-inf")
    _checked: dict[str, float] = field(default_factory=dict)

    def stale(self, kind: str, now: float) -> bool:
        if kind not in self._read:
            return True
        at, tenants = self._read[kind]
        return not tenants or self._woken >= at or now - at >= self.max_age

    def read(self, kind: str, tenants: Iterable[str], now: float) -> None:
        self._read[kind] = (now, list(tenants))

    def tenants(self, kind: str) -> list[str]:
        return list(self._read.get(kind, (0.0, []))[1])

    def drop(self, kind: str, tenant: str) -> None:
        found = self._read.get(kind)
        if found is not None and tenant in found[1]:
            found[1].remove(tenant)

    def woken(self, now: float) -> None:
        """New work may be waiting: every kind is read again at its next fill."""
        self._woken = now

    def checked(self, key: str, now: float) -> None:
        """Another read that goes stale the same way (e.g. rows of kinds nobody executes) found nothing."""
        self._checked[key] = now

    def fresh(self, key: str, now: float) -> bool:
        """Whether the read `key` found nothing recently enough that it need not be made again."""
        at = self._checked.get(key)
        return at is not None and self._woken < at and now - at < self.max_age
