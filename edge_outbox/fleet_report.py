"""What an outbox tells the bridge about itself: its health report and its diagnosis. Pure.

`build_health` and `build_diagnosis` take what the outbox knows (its database summary, the link, the
intake, the disk, the learned clock, recent errors) and the time, and return the messages of
intent_contract.device_wire; `edge_outbox.fleet_link` gathers the inputs and sends them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from intent_contract.device_wire import Diagnosis, ErrorLine, FailingKind, HealthReport, LinkStats, clip
from intent_contract.wire import DIAGNOSIS_ERRORS, DIAGNOSIS_FAILING, DIAGNOSIS_WINDOWS


class SummaryLike(Protocol):
    """The database summary (edge_outbox.ops.Summary)."""

    @property
    def counts(self) -> Mapping[str, int]: ...
    @property
    def bytes(self) -> Mapping[str, int]: ...
    @property
    def pending(self) -> int: ...
    @property
    def pending_bytes(self) -> int: ...
    @property
    def oldest_pending_created(self) -> int | None: ...


class LinkLike(Protocol):
    """The link as the forwarder sees it (edge_outbox.forward_wire.LinkSnapshot)."""

    @property
    def state(self) -> str: ...
    @property
    def since(self) -> int: ...
    @property
    def sent(self) -> int: ...
    @property
    def acked(self) -> int: ...
    @property
    def rate(self) -> float: ...
    @property
    def connects(self) -> int: ...
    @property
    def failures(self) -> int: ...


@dataclass(frozen=True, slots=True)
class EdgeFacts:
    """What the running outbox knows besides its database and link, read when a report is made."""

    max_items: int = 0  # queue limits (0: none)
    max_bytes: int = 0
    db_bytes: int = 0
    free_bytes: int | None = None
    held: int = 0  # publishes whose PUBACK waits: intake cannot store
    held_since_ms: int | None = None
    held_reason: str = ""


class RecentErrors:
    """The last few things that went wrong (link failures, refusals, storage errors), newest last."""

    def __init__(self, size: int = DIAGNOSIS_ERRORS) -> None:
        self._lines: deque[tuple[int, str, str]] = deque(maxlen=size)

    def add(self, at_ms: int, code: str, detail: str) -> None:
        self._lines.append((at_ms, code, clip(detail)))

    def lines(self, now_ms: int) -> tuple[ErrorLine, ...]:
        """Newest first, with their ages at `now_ms`."""
        return tuple(ErrorLine(max(0, now_ms - at), code, detail) for at, code, detail in reversed(self._lines))

    def last(self, now_ms: int) -> ErrorLine | None:
        lines = self.lines(now_ms)
        return lines[0] if lines else None


def _age(now_ms: int, then_ms: int | None) -> int | None:
    return None if then_ms is None else max(0, now_ms - then_ms)


def build_health(
    *,
    summary: SummaryLike,
    link: LinkLike,
    facts: EdgeFacts,
    errors: RecentErrors,
    clock_offset_ms: int,
    clock_source: str,
    software: str,
    now_ms: int,
) -> HealthReport:
    """The health report of this outbox at `now_ms` (its own clock)."""
    return HealthReport(
        at=now_ms,
        software=clip(software, 64),
        counts=dict(summary.counts),
        sizes=dict(summary.bytes),
        pending=summary.pending,
        pending_bytes=summary.pending_bytes,
        oldest_pending_age_ms=_age(now_ms, summary.oldest_pending_created),
        max_items=facts.max_items,
        max_bytes=facts.max_bytes,
        db_bytes=facts.db_bytes,
        free_bytes=facts.free_bytes,
        held=facts.held,
        held_for_ms=_age(now_ms, facts.held_since_ms),
        held_reason=clip(facts.held_reason),
        link=LinkStats(
            state=str(link.state),
            for_ms=max(0, now_ms - link.since),
            sent=link.sent,
            acked=link.acked,
            rate=round(max(0.0, link.rate), 3),
            connects=link.connects,
            failures=link.failures,
        ),
        last_error=errors.last(now_ms),
        clock_offset_ms=clock_offset_ms,
        clock_source=clip(clock_source, 64),
    )


def build_diagnosis(
    request_id: str,
    *,
    health: HealthReport,
    errors: RecentErrors,
    failing: Sequence[tuple[str, str, int]],
    failing_window_ms: int,
    bridge: str,
    transport: str,
    windows: Sequence[str],
) -> Diagnosis:
    """The answer to diagnose request `request_id`; `failing`: (kind, code, count), most frequent first."""
    return Diagnosis(
        request_id=request_id,
        health=health,
        errors=errors.lines(health.at),
        failing=tuple(FailingKind(clip(k, 64), clip(c, 64), n) for k, c, n in failing[:DIAGNOSIS_FAILING]),
        failing_window_ms=failing_window_ms,
        bridge=clip(bridge),
        transport=transport,
        windows=_windows(windows),
    )


def _windows(windows: Sequence[str]) -> tuple[str, ...]:
    """The forwarding windows as a diagnosis carries them: at most DIAGNOSIS_WINDOWS, the last saying how many
    were left out. A site with more (every half hour: 48) sent diagnoses the bridge refused, and
    `devices diagnose` waited its --timeout for an answer that never came."""
    if len(windows) <= DIAGNOSIS_WINDOWS:
        return tuple(windows)
    shown = DIAGNOSIS_WINDOWS - 1
    return (*windows[:shown], f"+{len(windows) - shown} more")
