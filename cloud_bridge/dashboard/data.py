"""What the dashboard shows and does, as a protocol of our own: the pages never touch the store directly.

`StoreData` answers it from the bridge's store, the fleet's health reports and the running listener;
the operations (retry, cancel) are the same functions the CLI's `intents` commands call, and an intent row is
the CLI's IntentInfo (cloud_bridge.intent_info).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cloud_bridge.intent_info import IntentInfo


@dataclass(frozen=True, slots=True)
class FleetRow:
    """One device in the fleet table (the columns of `cloud-bridge devices ls`)."""

    device_id: str
    tenant: str
    name: str
    connected: bool
    revoked: bool
    last_seen: float | None = None  # seconds since the epoch
    backlog: int | None = None
    oldest_pending_s: float | None = None
    last_error: str = ""
    version: str = ""
    clock_offset_s: float | None = None  # the bridge's clock minus the edge's (fleet_rules.clock_text shows it)
    stuck: bool = False
    anomalies: tuple[str, ...] = ()
    last_error_age_s: float | None = None  # how long before the row's time the last error was (`devices ls`)
    stuck_reason: str = ""  # why it is stuck, as `devices show` says it
    anomaly_details: tuple[str, ...] = ()  # "kind: detail", as `devices show` says them


@dataclass(frozen=True, slots=True)
class HealthPoint:
    """One health report of a device, for its history."""

    at: float
    backlog: int
    oldest_pending_s: float | None
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class UsageView:
    """Intents ended on one UTC day for one tenant and kind (cloud_bridge.usage)."""

    day: str  # YYYY-MM-DD (UTC)
    tenant: str
    kind: str
    count: int
    failures: int
    latency_ms: float | None = None  # provider time, median (bucket bound)
    p95_ms: float | None = None
    max_ms: float | None = None


@dataclass(frozen=True, slots=True)
class DeviceView:
    row: FleetRow
    history: Sequence[HealthPoint] = field(default_factory=tuple)


class DashboardData(Protocol):
    async def fleet(self, tenant: str | None = None, stuck_only: bool = False) -> list[FleetRow]:
        """Every device (of `tenant`; only the stuck ones), in no particular order."""

    async def device(self, device_id: str) -> DeviceView | None: ...

    async def intents(
        self, *, device_id: str | None, tenant: str | None, state: str | None, kind: str | None, limit: int
    ) -> list[IntentInfo]: ...

    async def retry(self, device_id: str, intent_id: str, operator: str, attempt: int | None = None) -> str:
        """Queue the intent again; a one-line outcome (its new state, or why not). `attempt`: the one the page
        showed; an intent at another attempt now is left alone."""

    async def cancel(self, device_id: str, intent_id: str, operator: str, attempt: int | None = None) -> str:
        """End a queued intent; a one-line outcome (`attempt` as for retry)."""

    async def usage(self, tenant: str | None, days: int) -> list[UsageView]: ...
