"""A reload that would strand live intents is refused: which kinds, and which tenants' rows of a kind, the new
integrations would serve no more.

A tenant's rows of a kind run on its own integration of that kind, else on the vendor's (docs/tenants.md).
So a reload strands rows when it takes away the last integration of a kind (every tenant's rows of it), and
also when it takes a tenant's own integration away where the vendor has none of that kind: that tenant's
rows, while other tenants still bring their own (a file cut off in the middle of `[tenants.*]`). Both would
end `failed`/`no_integration` at the next claim, for good. `Serving` and the functions on it are pure; the
node reads the ledger (`refuse_stranding`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cloud_bridge.errors import ConfigError
from cloud_bridge.integrations.base import Integration
from cloud_bridge.ledger import Ledger
from cloud_bridge.ledger_states import EntryState

Integrations = Mapping[str, Integration]  # by kind
Owned = Mapping[str, Integrations]  # the tenants' own, by tenant, then kind


def every_integration(integrations: Integrations, own: Owned) -> list[Integration]:
    """The vendor's integrations and every tenant's own."""
    return [*integrations.values(), *(i for tenant in own.values() for i in tenant.values())]


@dataclass(frozen=True, slots=True)
class Serving:
    """Which kinds a config's integrations serve: the vendor's for every tenant, a tenant's own for it alone."""

    vendor: frozenset[str]
    own: Mapping[str, frozenset[str]]

    @classmethod
    def of(cls, integrations: Integrations, own: Owned) -> Serving:
        return cls(frozenset(integrations), {tenant: frozenset(kinds) for tenant, kinds in own.items()})

    def serves(self, kind: str, tenant: str) -> bool:
        return kind in self.vendor or kind in self.own.get(tenant, frozenset())

    def kinds(self) -> set[str]:
        """Every kind some integration serves, for some tenant."""
        return set(self.vendor).union(*self.own.values())


def gone(old: Serving, new: Serving) -> list[str]:
    """Kinds `old` serves and `new` serves for no tenant at all."""
    return sorted(old.kinds() - new.kinds())


def narrowed(old: Serving, new: Serving) -> list[str]:
    """Kinds `new` still serves, but for fewer tenants: no vendor integration, and a tenant served before is not."""
    kinds = []
    for kind in sorted(new.kinds() - new.vendor):
        before = {t for t, k in old.own.items() if kind in k}
        after = {t for t, k in new.own.items() if kind in k}
        if kind in old.vendor or before - after:
            kinds.append(kind)
    return kinds


def stranded(kind: str, tenants: Iterable[str], old: Serving, new: Serving) -> list[str]:
    """Of `tenants` (those with rows of `kind` waiting), the ones served before and not after."""
    return sorted(t for t in set(tenants) if old.serves(kind, t) and not new.serves(kind, t))


async def refuse_stranding(ledger: Ledger, old: Serving, new: Serving, now: float) -> None:
    """ConfigError naming what would be stranded; nothing when the new integrations serve every live row."""
    problems: list[str] = []
    lost = gone(old, new)
    if lost:
        waiting = dict.fromkeys(lost, 0)
        for (state, kind), count in (await ledger.depth()).counts.items():
            if kind in waiting and state in (EntryState.QUEUED, EntryState.RUNNING):
                waiting[kind] += count
        problems += [f"{kind} ({count} queued or running)" for kind, count in waiting.items() if count]
    for kind in narrowed(old, new):
        tenants = stranded(kind, await ledger.waiting_tenants([kind], now), old, new)
        if tenants:
            which = "tenant" if len(tenants) == 1 else "tenants"
            problems.append(f"{kind} of {which} {', '.join(tenants)} (intents waiting)")
    if problems:
        raise ConfigError(
            f"no integration would serve {'; '.join(problems)}: they would all fail at once; cancel them first"
            " (cloud-bridge intents cancel) or keep the integration"
        )
