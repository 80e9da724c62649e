"""Fleet health at the bridge: what the store keeps about each device's site, and the contract of every backend.

Per device: the latest health report and a bounded history of them, where its session is (which node,
since when, from which address, last seen), and hourly telemetry for the anomaly rules (refused
connects, connects, intents created, addresses). Diagnose requests are rows too, so that any process
(the CLI, a dashboard) can ask and the node holding the device answers (docs/fleet.md).
Backends: `fleet_sql.SqlFleet` on SQLite (`ledger.db`) and on PostgreSQL, one SQL text for both.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from intent_contract.device_wire import Diagnosis, HealthReport

HOUR_S = 3600.0
HISTORY_PER_DEVICE = 100  # reports kept per device ...
HISTORY_AGE_S = 7 * 86_400.0  # ... and for at most this long
TELEMETRY_AGE_S = 8 * 86_400.0  # hourly buckets: a week of baseline and the hours being judged
ADDRESS_AGE_S = 7 * 86_400.0
REQUEST_AGE_S = 86_400.0


def hour_of(seconds: float) -> int:
    """The hour bucket of a time (hours since the epoch)."""
    return int(seconds // HOUR_S)


@dataclass(frozen=True, slots=True)
class Sighting:
    """One CONNECT naming an enrolled device, as the gate judged it."""

    device_id: str
    at: float
    address: str  # the source address (an IPv6 /64 counts as one)
    refused: str = ""  # the refusal code; "" when the device connected


@dataclass(frozen=True, slots=True)
class Received:
    """A health report as it reached this node."""

    device_id: str
    at: float  # the bridge's clock when it arrived
    report: HealthReport
    history: bool  # kept in the device's history too

    @property
    def offset_ms(self) -> int:
        """The bridge's clock minus the edge's, measured on arrival (off by the message's transit time)."""
        return round(self.at * 1000) - self.report.at


@dataclass(frozen=True, slots=True)
class Flush:
    """What one node writes in one transaction: its heartbeat and what it saw since the last flush."""

    node: str
    now: float
    sightings: tuple[Sighting, ...] = ()
    reports: tuple[Received, ...] = ()
    # Devices whose session this node holds now and did not at the last flush, or that connected here again since.
    held: tuple[str, ...] = ()
    released: tuple[str, ...] = ()  # devices whose session this node held at the last flush and no longer does
    volume: Mapping[tuple[str, int], int] | None = None  # (device id, hour created) -> intents admitted


@dataclass(frozen=True, slots=True)
class DeviceState:
    """Where a device's session is, what it last reported, and its last refused connect."""

    device_id: str
    node: str = ""  # the node holding its session; "" when none
    connected_at: float | None = None
    seen_at: float | None = None  # last contact: a connect, a report, or the end of its session
    address: str = ""
    report: HealthReport | None = None
    report_at: float | None = None
    offset_ms: int | None = None
    refused_code: str = ""
    refused_at: float | None = None


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    at: float
    offset_ms: int
    report: HealthReport


@dataclass(frozen=True, slots=True)
class Telemetry:
    """One device's counts for the anomaly rules, at a given time (fleet_rules.anomalies)."""

    auth_failures: int = 0  # refused connects in the current and the previous hour
    connects: int = 0  # connects in the current and the previous hour
    addresses: tuple[str, ...] = ()  # addresses it connected (or tried to) from in the last hour
    recent_volume: int = 0  # intents created in the busier of the current and the previous hour
    baseline_volume: int = 0  # intents created in the week before those two hours


class RequestState(StrEnum):
    PENDING = "pending"  # asked; no node has taken it yet
    SENT = "sent"  # the node holding the device sent it the request
    ANSWERED = "answered"
    UNANSWERABLE = "unanswerable"  # the device cannot answer (an edge too old to know diagnose requests)


@dataclass(frozen=True, slots=True)
class DiagnoseRequest:
    request_id: str
    device_id: str
    asked_at: float
    state: RequestState
    node: str = ""
    detail: str = ""
    answered_at: float | None = None
    diagnosis: Diagnosis | None = None


class FleetStore(Protocol):
    """Fleet health in the store; short synchronous calls (async callers use own_threads.own_thread)."""

    def open(self) -> None:
        """Connect (the schema is the store's migrations)."""

    def close(self) -> None:
        """Release connections."""

    def flush(self, flush: Flush) -> None:
        """Write one node's heartbeat and what it saw, in one transaction."""

    def leave(self, node: str, now: float) -> None:
        """A node stops: every session it held has ended, and it has no heartbeat any more."""

    def states(self, device_ids: Collection[str] | None = None) -> dict[str, DeviceState]:
        """The state of these devices (None: of every device that was ever seen)."""

    def now(self) -> float:
        """The store's clock (seconds since the epoch): the time the fleet view is read at, whatever this
        process's clock says (heartbeats are in it; the nodes' own times are as close to it as NTP keeps them)."""

    def nodes(self) -> dict[str, float]:
        """Every node's last heartbeat, in the store's time (`now`)."""

    def history(self, device_id: str, limit: int) -> list[HistoryEntry]:
        """The device's kept reports, newest first."""

    def telemetry(self, now: float, device_ids: Collection[str] | None = None) -> dict[str, Telemetry]:
        """Counts for the anomaly rules at `now`, for devices that have any. For the whole fleet (None), the
        volumes only of devices that could be flagged for one (fleet_rules.VOLUME_FLOOR in an hour)."""

    def ask(self, request_id: str, device_id: str, now: float) -> None:
        """Record a diagnose request for the node holding the device to send."""

    def pending(self, since: float) -> list[DiagnoseRequest]:
        """Requests asked since `since` that no node has taken yet."""

    def mark(self, request_id: str, state: RequestState, node: str, detail: str, now: float) -> bool:
        """Move a pending request, or one `node` took already (sent), to `state` (taken by `node`); False when
        it was neither."""

    def answer(self, request_id: str, device_id: str, diagnosis: Diagnosis, now: float) -> bool:
        """Store the device's answer to a request sent to it; False when there is no such request."""

    def request(self, request_id: str) -> DiagnoseRequest | None:
        """One request, answered or not."""

    def prune(self, now: float) -> int:
        """Drop history, telemetry, addresses and requests past their age; returns rows deleted."""
