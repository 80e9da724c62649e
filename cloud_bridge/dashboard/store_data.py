"""The dashboard's data from the bridge's store: the fleet view of `cloud-bridge devices` (fleet_query,
from any node: which node holds a device is in the store), the ledger and the registry."""

from __future__ import annotations

from collections.abc import Callable

from cloud_bridge import fleet_query, operator_api
from cloud_bridge.dashboard.data import DeviceView, FleetRow, HealthPoint, UsageView
from cloud_bridge.errors import BridgeError, UnknownDeviceError
from cloud_bridge.fleet import FleetStore, HistoryEntry
from cloud_bridge.fleet_rules import DeviceRow
from cloud_bridge.intent_info import IntentInfo
from cloud_bridge.intent_sql import IntentQuery, SqlIntents
from cloud_bridge.ledger import Ledger
from cloud_bridge.own_threads import own_thread
from cloud_bridge.registry import Registry
from cloud_bridge.usage import DAY_S, Dimension, UsageQuery, day_of
from intent_contract.device_wire import HealthReport

# A retry or cancel sent from a page that showed an earlier attempt of the intent: left alone (it was taken, and a
# row another operator had retried, which failed again, ran once more).
MOVED_ON = (
    "{action} not done: {device_id}/{intent_id} changed since the page was shown (now {state}, attempt {attempt});"
    " look at it again"
)


def fleet_row(row: DeviceRow, now: float) -> FleetRow:
    """The row at `now` (the store's time the row was made at: the last error's age is from then)."""
    return FleetRow(
        device_id=row.device_id,
        tenant=row.tenant,
        name=row.name,
        connected=row.connected,
        revoked=row.revoked,
        last_seen=row.seen_at,
        backlog=row.backlog,
        oldest_pending_s=row.oldest_pending_s,
        last_error="" if row.last_error is None else f"{row.last_error[1]}: {row.last_error[2]}",
        version=row.version or "",
        clock_offset_s=None if row.clock_offset_ms is None else row.clock_offset_ms / 1000,
        stuck=row.stuck is not None,
        anomalies=tuple(str(a.kind) for a in row.anomalies),
        last_error_age_s=None if row.last_error is None else max(0.0, now - row.last_error[0]),
        stuck_reason=row.stuck or "",
        anomaly_details=tuple(f"{a.kind}: {a.detail}" for a in row.anomalies),
    )


def health_point(entry: HistoryEntry) -> HealthPoint:
    report: HealthReport = entry.report
    oldest = report.oldest_pending_age_ms
    error = report.last_error
    return HealthPoint(
        at=entry.at,
        backlog=report.pending,
        oldest_pending_s=None if oldest is None else oldest / 1000,
        last_error="" if error is None else f"{error.code}: {error.detail}",
    )


class StoreData:
    """DashboardData on the bridge's store."""

    def __init__(
        self,
        registry: Registry,
        fleet: FleetStore,
        clock: Callable[[], float],
        *,
        ledger: Ledger | None = None,
        intents: SqlIntents | None = None,
    ) -> None:
        self._registry = registry
        self._fleet = fleet
        self._clock = clock
        self._ledger = ledger
        self._intents = intents

    async def fleet(self, tenant: str | None = None, stuck_only: bool = False) -> list[FleetRow]:
        now = await own_thread(self._fleet.now)  # the store's time, as `devices ls`: this node's clock may be off
        rows = await own_thread(
            fleet_query.overview, self._registry, self._fleet, now=now, tenant=tenant, stuck_only=stuck_only
        )
        return [fleet_row(r, now) for r in rows]

    async def device(self, device_id: str) -> DeviceView | None:
        now = await own_thread(self._fleet.now)
        try:
            found = await own_thread(fleet_query.detail, self._registry, self._fleet, device_id, now=now)
        except UnknownDeviceError:
            return None
        return DeviceView(fleet_row(found.row, now), [health_point(h) for h in found.history])

    async def intents(
        self, *, device_id: str | None, tenant: str | None, state: str | None, kind: str | None, limit: int
    ) -> list[IntentInfo]:
        if self._intents is None:
            return []
        query = IntentQuery(device_id, tenant, operator_api.state_of(state), kind, limit)
        return await own_thread(operator_api.list_intents, self._intents, query)

    async def _operate(self, action: str, device_id: str, intent_id: str, operator: str, attempt: int | None) -> str:
        if self._intents is None:
            return f"{action} is not available on this bridge"
        fn = operator_api.retry if action == "retry" else operator_api.cancel
        try:
            if attempt is not None:  # the attempt the page showed: a row retried since is another operator's doing
                found = await own_thread(self._intents.find, intent_id, device_id)
                if found and found[0].attempt != attempt:
                    return MOVED_ON.format(action=action, device_id=device_id, intent_id=intent_id,
                                           state=found[0].state, attempt=found[0].attempt)  # fmt: skip
            done = await own_thread(fn, self._intents, (device_id, intent_id), operator, self._clock())
        except BridgeError as exc:
            return f"{action} refused: {exc.detail}"
        return done.line()

    async def retry(self, device_id: str, intent_id: str, operator: str, attempt: int | None = None) -> str:
        return await self._operate("retry", device_id, intent_id, operator, attempt)

    async def cancel(self, device_id: str, intent_id: str, operator: str, attempt: int | None = None) -> str:
        return await self._operate("cancel", device_id, intent_id, operator, attempt)

    async def usage(self, tenant: str | None, days: int) -> list[UsageView]:
        """The last `days` UTC days per day, tenant and kind, oldest first (the rollup `cloud-bridge usage` reads)."""
        if self._ledger is None:
            return []
        now = self._clock()
        by = (Dimension.DAY, Dimension.TENANT, Dimension.KIND)
        rows = await self._ledger.usage(UsageQuery(day_of(now - (days - 1) * DAY_S), day_of(now), tenant, group=by))
        return [UsageView(r.day, r.tenant, r.kind, r.count, r.failures, r.p50_ms, r.p95_ms, r.max_ms) for r in rows]
