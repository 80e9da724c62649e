"""A reload that would strand live intents is refused: which kinds, and which tenants' rows of a kind, the new
integrations would serve no more.

A tenant's rows of a kind run on its own integration of that kind, else on the vendor's (docs/tenants.md).
So a reload strands rows when it takes away the last integration of a kind (every tenant's rows of it), and
also when it takes a tenant's own integration away where the vendor has none of that kind: that tenant's
rows, while other tenants still bring their own (a file cut off in the middle of `[tenants.*]`). Both would
end `failed`/`no_integration` at the next claim, for good. Likewise a reload that drops a tenant's whole
`[tenants.T]` table while T has devices (the file cut off before it): every intent they send from then on
would be `rejected`/`policy_tenant`, for good. The checks are pure; the node reads the ledger and the
registry (`refuse_stranding`). A start cannot be refused so (the config may be what the operator means, and
the node must run to be reloaded): it logs such tenants (`without_policy`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from cloud_bridge.errors import ConfigError
from cloud_bridge.integrations.base import Integration
from cloud_bridge.ledger import Ledger
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.registry import Device

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


def dropped(old: Collection[str], new: Collection[str], devices: Iterable[Device]) -> dict[str, int]:
    """Tenants with a table in `old` and none in `new`, with how many of `devices` (not revoked) each has."""
    gone = set(old) - set(new)
    counts: dict[str, int] = {}
    for device in devices:
        if device.tenant in gone and device.revoked_at is None:
            counts[device.tenant] = counts.get(device.tenant, 0) + 1
    return dict(sorted(counts.items()))


def without_policy(tables: Collection[str], devices: Iterable[Device]) -> str | None:
    """At start: the tenants whose devices (not revoked) the config has no `[tenants.T]` table for, with their
    counts, as a warning; None when there are none."""
    devices = list(devices)
    counts = dropped({d.tenant for d in devices}, tables, devices)
    if not counts:
        return None
    named = ", ".join(f"{tenant} ({n} device{'s' * (n != 1)})" for tenant, n in counts.items())
    return (
        f"enrolled devices of tenants the config has no [tenants.T] table for: {named}; every intent they send is"
        " rejected policy_tenant: add the tables (a reload takes them), or revoke the devices"
    )


async def refuse_stranding(
    ledger: Ledger, old: Serving, new: Serving, now: float, tenants: Mapping[str, int] | None = None
) -> None:
    """ConfigError naming what would be stranded: live rows the new integrations serve no more, and the
    `tenants` (`dropped`: devices by tenant) whose devices would have no policy; nothing when neither."""
    problems: list[str] = []
    lost = gone(old, new)
    if lost:
        waiting = dict.fromkeys(lost, 0)
        for (state, kind), count in (await ledger.depth()).counts.items():
            if kind in waiting and state in (EntryState.QUEUED, EntryState.RUNNING):
                waiting[kind] += count
        problems += [f"{kind} ({count} queued or running)" for kind, count in waiting.items() if count]
    for kind in narrowed(old, new):
        tenants_left = stranded(kind, await ledger.waiting_tenants([kind], now), old, new)
        if tenants_left:
            which = "tenant" if len(tenants_left) == 1 else "tenants"
            problems.append(f"{kind} of {which} {', '.join(tenants_left)} (intents waiting)")
    refusals = []
    if problems:
        refusals.append(
            f"no integration would serve {'; '.join(problems)}: they would all fail at once; cancel them first"
            " (cloud-bridge intents cancel) or keep the integration"
        )
    if tenants:
        named = ", ".join(f"{tenant} ({count} device{'s' if count > 1 else ''})" for tenant, count in tenants.items())
        refusals.append(
            f"no [tenants.T] table for {named}: every intent of their devices would be rejected policy_tenant;"
            " revoke the devices first (cloud-bridge devices revoke) or keep the table (an empty one refuses"
            " their intents on purpose)"
        )
    if refusals:
        raise ConfigError("; ".join(refusals))
