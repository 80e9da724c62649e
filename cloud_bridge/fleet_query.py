"""The fleet view as functions: every device's row, one device in detail, and a diagnosis asked of a device.

`devices ls/show/diagnose` print what these return, and a dashboard can serve the same (each result
has `to_json`). They read the registry and the fleet tables through the store's protocols, so they
work the same from any process and on either backend; they are synchronous (a server calls them
with own_threads.own_thread). A diagnosis is asked through the store: a request row that the node
holding the device sends on and whose answer it writes back (fleet_desk); here we wait for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cloud_bridge.errors import UnknownDeviceError
from cloud_bridge.fleet import DeviceState, DiagnoseRequest, FleetStore, HistoryEntry, RequestState, Telemetry
from cloud_bridge.fleet_desk import new_request_id
from cloud_bridge.fleet_rules import SORT_KEYS, DeviceRow, device_row, rfc3339
from cloud_bridge.registry import Device, Registry
from intent_contract.device_wire import Diagnosis, HealthReport

DEFAULT_STUCK_AFTER_S = 3600.0
POLL_S = 0.2


def overview(
    registry: Registry,
    fleet: FleetStore,
    *,
    now: float | None = None,
    stuck_after: float = DEFAULT_STUCK_AFTER_S,
    tenant: str | None = None,
    stuck_only: bool = False,
    sort: str = "id",
) -> list[DeviceRow]:
    """Every enrolled device's row (of one tenant; only the stuck ones), sorted by `sort` (fleet_rules.SORT_KEYS),
    at `now` (default: the store's time, `FleetStore.now`)."""
    now = fleet.now() if now is None else now
    devices = [d for d in registry.all_devices() if tenant is None or d.tenant == tenant]
    states, nodes, telemetry = fleet.states(), fleet.nodes(), fleet.telemetry(now)
    rows = [
        device_row(d, states.get(d.device_id), nodes, telemetry.get(d.device_id), now=now, stuck_after=stuck_after)
        for d in devices
    ]
    if stuck_only:
        rows = [r for r in rows if r.stuck]
    return sorted(rows, key=SORT_KEYS[sort])


@dataclass(frozen=True, slots=True)
class DeviceDetail:
    """`devices show`: the registry's device, its row, and what the store keeps of it."""

    device: Device
    row: DeviceRow
    state: DeviceState | None
    telemetry: Telemetry | None
    history: list[HistoryEntry]

    def to_json(self) -> dict[str, Any]:
        state, device = self.state, self.device
        return {
            **device.to_json(),
            **self.row.to_json(),
            "revoked_at": rfc3339(device.revoked_at),
            "connected_at": rfc3339(state.connected_at) if state and self.row.connected else None,
            "refused": None
            if state is None or state.refused_at is None
            else {"code": state.refused_code, "at": rfc3339(state.refused_at)},
            "telemetry": None if self.telemetry is None else _telemetry_json(self.telemetry),
            "report": None if self.row.report is None else self.row.report.to_wire(),
            "history": [
                {"at": rfc3339(h.at), "offset_ms": h.offset_ms, "report": h.report.to_wire()} for h in self.history
            ],
        }


def _telemetry_json(t: Telemetry) -> dict[str, Any]:
    return {
        "auth_failures": t.auth_failures,
        "connects": t.connects,
        "addresses": list(t.addresses),
        "recent_volume": t.recent_volume,
        "baseline_volume": t.baseline_volume,
    }


def _device(registry: Registry, device_id: str) -> Device:
    device = registry.get(device_id)
    if device is None:
        raise UnknownDeviceError(f"no device {device_id!r}")
    return device


def detail(
    registry: Registry,
    fleet: FleetStore,
    device_id: str,
    *,
    now: float | None = None,
    stuck_after: float = DEFAULT_STUCK_AFTER_S,
    history: int = 20,
) -> DeviceDetail:
    """One device with its history (newest first) at `now` (default: the store's time); UnknownDeviceError when
    there is no such device."""
    device = _device(registry, device_id)
    now = fleet.now() if now is None else now
    state = fleet.states([device_id]).get(device_id)
    telemetry = fleet.telemetry(now, [device_id]).get(device_id)
    row = device_row(device, state, fleet.nodes(), telemetry, now=now, stuck_after=stuck_after)
    return DeviceDetail(device, row, state, telemetry, fleet.history(device_id, history) if history else [])


class Outcome(StrEnum):
    ANSWERED = "answered"
    OFFLINE = "offline"  # no node holds its session: its last report is all there is
    UNANSWERABLE = "unanswerable"  # connected, but its edge does not take diagnose requests
    NO_ANSWER = "no_answer"  # connected, but no answer came in time


@dataclass(frozen=True, slots=True)
class DiagnoseResult:
    outcome: Outcome
    row: DeviceRow
    request: DiagnoseRequest | None = None

    @property
    def diagnosis(self) -> Diagnosis | None:
        return None if self.request is None else self.request.diagnosis

    @property
    def last_report(self) -> HealthReport | None:
        return self.row.report

    def to_json(self) -> dict[str, Any]:
        request = self.request
        return {
            "outcome": str(self.outcome),
            "answered": self.outcome is Outcome.ANSWERED,
            "device": self.row.to_json(),
            "request_id": None if request is None else request.request_id,
            "node": None if request is None else request.node or None,
            "detail": None if request is None else request.detail or None,
            "answered_at": None if request is None else rfc3339(request.answered_at),
            "diagnosis": None if self.diagnosis is None else self.diagnosis.to_wire(),
            "last_report": None if self.last_report is None else self.last_report.to_wire(),
        }


def diagnose(
    registry: Registry,
    fleet: FleetStore,
    device_id: str,
    *,
    timeout: float,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> DiagnoseResult:
    """Ask the device for a diagnosis through the node holding its session and wait up to `timeout` seconds.

    A device no node holds is not asked: its last report is the answer (`Outcome.OFFLINE`).
    """
    device = _device(registry, device_id)

    def row() -> DeviceRow:  # at the store's time, as every fleet view (`overview`)
        state = fleet.states([device_id]).get(device_id)
        return device_row(device, state, fleet.nodes(), None, now=fleet.now(), stuck_after=DEFAULT_STUCK_AFTER_S)

    current = row()
    if not current.connected:
        return DiagnoseResult(Outcome.OFFLINE, current)
    request_id = new_request_id()
    fleet.ask(request_id, device_id, clock())
    deadline = clock() + timeout
    while True:
        request = fleet.request(request_id)
        if request is not None and request.state is RequestState.ANSWERED:
            return DiagnoseResult(Outcome.ANSWERED, row(), request)
        if request is not None and request.state is RequestState.UNANSWERABLE:
            return DiagnoseResult(Outcome.UNANSWERABLE, row(), request)
        if clock() >= deadline:
            current = row()
            return DiagnoseResult(Outcome.NO_ANSWER if current.connected else Outcome.OFFLINE, current, request)
        sleep(POLL_S)
