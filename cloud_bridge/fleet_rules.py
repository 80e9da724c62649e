"""The fleet view's rules: is a session live, is a site stuck, which anomalies to flag; one row per device. Pure.

`device_row` joins a registry device with what the store knows of it (fleet.DeviceState, Telemetry,
the nodes' heartbeats) at a given time; `devices ls/show` print these rows and a dashboard can
serve them (`DeviceRow.to_json`). The thresholds are documented in docs/fleet.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from cloud_bridge.fleet import DeviceState, Telemetry
from intent_contract.device_wire import HealthReport
from intent_contract.timefmt import format_age, format_ms

HEARTBEAT_S = 5.0  # a node writes its heartbeat this often ...
STALE_AFTER_S = 4 * HEARTBEAT_S  # ... and a node silent for longer has stopped: its sessions are gone
AUTH_FAILURES = 5  # refused connects of one device id in the current and the previous hour
ADDRESSES = 2  # distinct source addresses of one device id in the last hour
VOLUME_FACTOR = 10.0  # intents created in an hour, against the device's hourly mean over the week before
VOLUME_FLOOR = 100  # ... and at least this many
BASELINE_HOURS = 168
BASELINE_MIN_S = 86_400.0  # a device enrolled less than a day ago has no usual volume yet


class AnomalyKind(StrEnum):
    AUTH_FAILURES = "auth_failures"
    MANY_ADDRESSES = "many_addresses"
    VOLUME_SPIKE = "volume_spike"


@dataclass(frozen=True, slots=True)
class Anomaly:
    kind: AnomalyKind
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"kind": str(self.kind), "detail": self.detail}


class DeviceLike(Protocol):
    """A registry device (cloud_bridge.registry.Device)."""

    @property
    def device_id(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def enrolled_at(self) -> float: ...
    @property
    def revoked_at(self) -> float | None: ...


def anomalies(telemetry: Telemetry | None, *, enrolled_at: float, now: float) -> tuple[Anomaly, ...]:
    """What an operator must look at: repeated refused connects, one id from many addresses, a volume spike."""
    if telemetry is None:
        return ()
    found: list[Anomaly] = []
    if telemetry.auth_failures >= AUTH_FAILURES:
        found.append(
            Anomaly(AnomalyKind.AUTH_FAILURES, f"{telemetry.auth_failures} refused connects in the last hour or two")
        )
    if len(telemetry.addresses) >= ADDRESSES:
        shown = ", ".join(telemetry.addresses[:5]) + (", ..." if len(telemetry.addresses) > 5 else "")
        detail = f"connects from {len(telemetry.addresses)} addresses in the last hour: {shown}"
        found.append(Anomaly(AnomalyKind.MANY_ADDRESSES, detail))
    known_hours = min(float(BASELINE_HOURS), (now - enrolled_at - 2 * 3600) / 3600)
    if now - enrolled_at >= BASELINE_MIN_S and known_hours > 0:
        usual = telemetry.baseline_volume / known_hours
        if telemetry.recent_volume >= max(VOLUME_FLOOR, VOLUME_FACTOR * usual):
            found.append(
                Anomaly(
                    AnomalyKind.VOLUME_SPIKE,
                    f"{telemetry.recent_volume} intents created in one hour; usually {usual:.1f} an hour",
                )
            )
    return tuple(found)


class DiagnoseStep(StrEnum):
    """What the node holding a device does with a diagnose request for it (`diagnose_step`)."""

    SEND = "send"
    WAIT = "wait"  # connected here but not subscribed to diagnose requests yet: it is still starting its session
    UNANSWERABLE = "unanswerable"  # an edge older than diagnose requests: it never subscribes to them


SUBSCRIBE_GRACE_S = 10.0  # an edge subscribes right after it connects; one that has not after this is too old
WAITING = "waiting for the device to subscribe to diagnose requests (it is starting its session)"


def diagnose_step(*, subscribed: bool, reported: bool, connected_for: float) -> DiagnoseStep:
    """Send when the device takes diagnose requests now. A device not subscribed yet is only told to be too old
    once it has been connected for SUBSCRIBE_GRACE_S without reporting its health (an edge that reports knows
    diagnose requests too): one asked between its CONNECT and its SUBSCRIBE, mid-reconnect, was called too old."""
    if subscribed:
        return DiagnoseStep.SEND
    if reported or connected_for < SUBSCRIBE_GRACE_S:
        return DiagnoseStep.WAIT
    return DiagnoseStep.UNANSWERABLE


def session_live(state: DeviceState | None, nodes: Mapping[str, float], now: float) -> bool:
    """True when a node holds the device's session and that node is alive (its heartbeat is fresh)."""
    if state is None or not state.node:
        return False
    return nodes.get(state.node, float("-inf")) >= now - STALE_AFTER_S


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """One device as `devices ls` shows it."""

    device_id: str
    tenant: str
    name: str
    revoked: bool
    enrolled_at: float
    connected: bool
    node: str  # the node holding its session ("" when not connected)
    seen_at: float | None  # last contact (now, when connected)
    address: str
    backlog: int | None  # pending at the edge, from its last report (None: no report)
    oldest_pending_s: float | None  # age of its oldest pending intent now, estimated from its last report
    last_error: tuple[float, str, str] | None  # (when, code, detail)
    version: str | None
    clock_offset_ms: int | None  # the bridge's clock minus the edge's, measured at its last report
    report_at: float | None
    report: HealthReport | None
    anomalies: tuple[Anomaly, ...]
    stuck: str | None  # why it is stuck, or None

    @property
    def flags(self) -> tuple[str, ...]:
        return tuple(str(a.kind) for a in self.anomalies) + (("stuck",) if self.stuck else ())

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; times in RFC 3339 (as every `cloud-bridge ... --json` prints them)."""
        return {
            "device_id": self.device_id,
            "tenant": self.tenant,
            "name": self.name,
            "status": "revoked" if self.revoked else "active",
            "enrolled_at": rfc3339(self.enrolled_at),
            "connected": self.connected,
            "node": self.node or None,
            "seen_at": rfc3339(self.seen_at),
            "address": self.address or None,
            "backlog": self.backlog,
            "oldest_pending_s": self.oldest_pending_s,
            "last_error": None
            if self.last_error is None
            else {"at": rfc3339(self.last_error[0]), "code": self.last_error[1], "detail": self.last_error[2]},
            "version": self.version,
            "clock_offset_ms": self.clock_offset_ms,
            "report_at": rfc3339(self.report_at),
            "anomalies": [a.to_json() for a in self.anomalies],
            "stuck": self.stuck,
            "flags": list(self.flags),
        }


def clock_text(offset_ms: int | None) -> str:
    """The edge's clock against the bridge's, as `devices ls` and the dashboard show it: '+2h00m' ahead, '-3s'
    behind, '±0s' within a second; `offset_ms` is the bridge's clock minus the edge's, as measured."""
    if offset_ms is None:
        return "-"
    edge_minus_bridge = -offset_ms / 1000
    if abs(edge_minus_bridge) < 1:
        return "±0s"
    return ("+" if edge_minus_bridge > 0 else "-") + format_age(abs(edge_minus_bridge))


def rfc3339(seconds: float | None) -> str | None:
    return None if seconds is None else format_ms(int(seconds * 1000))


def _stuck(
    *, revoked: bool, connected: bool, seen_at: float | None, enrolled_at: float, backlog: int | None,
    oldest: float | None, now: float, after: float,
) -> str | None:  # fmt: skip
    if revoked:
        return None
    if backlog and oldest is not None and oldest > after:
        return f"{backlog} pending, the oldest for {format_age(oldest)}"
    if connected:
        return None
    if seen_at is None:
        return f"never connected; enrolled {format_age(now - enrolled_at)} ago" if now - enrolled_at > after else None
    return f"no contact for {format_age(now - seen_at)}" if now - seen_at > after else None


def device_row(
    device: DeviceLike,
    state: DeviceState | None,
    nodes: Mapping[str, float],
    telemetry: Telemetry | None,
    *,
    now: float,
    stuck_after: float,
) -> DeviceRow:
    """The device's row at `now`; stuck: a backlog older than `stuck_after`, or no contact for that long."""
    connected = session_live(state, nodes, now) and device.revoked_at is None
    report = state.report if state is not None else None
    report_at = state.report_at if state is not None else None
    backlog = oldest = None
    last_error = None
    if report is not None and report_at is not None:
        backlog = report.pending
        if report.pending and report.oldest_pending_age_ms is not None:
            oldest = report.oldest_pending_age_ms / 1000 + max(0.0, now - report_at)
        if report.last_error is not None:
            error = report.last_error
            last_error = (report_at - error.age_ms / 1000, error.code, error.detail)
    seen_at = now if connected else (state.seen_at if state is not None else None)
    stuck = _stuck(
        revoked=device.revoked_at is not None, connected=connected, seen_at=seen_at, enrolled_at=device.enrolled_at,
        backlog=backlog, oldest=oldest, now=now, after=stuck_after,
    )  # fmt: skip
    return DeviceRow(
        device_id=device.device_id,
        tenant=device.tenant,
        name=device.name,
        revoked=device.revoked_at is not None,
        enrolled_at=device.enrolled_at,
        connected=connected,
        node=state.node if connected and state is not None else "",
        seen_at=seen_at,
        address=state.address if state is not None else "",
        backlog=backlog,
        oldest_pending_s=oldest,
        last_error=last_error,
        version=report.software if report is not None else None,
        clock_offset_ms=state.offset_ms if state is not None and report is not None else None,
        report_at=report_at,
        report=report,
        anomalies=anomalies(telemetry, enrolled_at=device.enrolled_at, now=now),
        stuck=stuck,
    )


SORT_KEYS: dict[str, Any] = {
    "id": lambda r: r.device_id,
    "tenant": lambda r: (r.tenant, r.device_id),
    "backlog": lambda r: (-(r.backlog or 0), r.device_id),
    "oldest": lambda r: (-(r.oldest_pending_s or 0.0), r.device_id),
    "seen": lambda r: (r.connected, r.seen_at or 0.0, r.device_id),  # longest without contact first
    "flags": lambda r: (-len(r.flags), r.device_id),
}
