"""The bridge ledger: one durable row per (device, intent id), the contract every backend implements.

The ledger is what makes "executed once" hold: a row is unique per (device_id, intent_id), a duplicate
is acked again and never run again, and a final result stays until the edge confirms it. This module
holds the types and the `Ledger` protocol only; `ledger_sqlite.SqliteLedger` is the default backend.
Times: `now`, `next_run` and `at` arguments are seconds since the epoch (float); `created` and
`expires` are milliseconds, as on the wire; `Ack.at` is milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from cloud_bridge.audit import AuditEvent, AuditRecord
from intent_contract.codec import Ack, AckState, Envelope
from intent_contract.names import is_name

MAX_DETAIL = 1000  # Ack.detail refuses longer text; the ledger truncates before storing


class EntryState(StrEnum):
    """Where a ledger row is: queued and running are live, the rest are final."""

    QUEUED = "queued"
    RUNNING = "running"
    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"
    REJECTED = "rejected"

    @property
    def final(self) -> bool:
        return self not in (EntryState.QUEUED, EntryState.RUNNING)

    @property
    def ack_state(self) -> AckState:
        """The state reported to the edge: live rows are `accepted`."""
        return AckState.ACCEPTED if not self.final else AckState(self.value)


FINAL_STATES: tuple[EntryState, ...] = tuple(s for s in EntryState if s.final)
# A row in one of these states runs again when an envelope arrives with a higher attempt.
READMITTABLE: tuple[EntryState, ...] = (EntryState.FAILED, EntryState.EXPIRED)
# The audit event written when a row enters each state (running is not audited).
AUDIT_EVENTS: Mapping[EntryState, AuditEvent] = {
    EntryState.QUEUED: AuditEvent.ACCEPT,
    EntryState.DELIVERED: AuditEvent.DELIVER,
    EntryState.FAILED: AuditEvent.FAIL,
    EntryState.EXPIRED: AuditEvent.EXPIRE,
    EntryState.REJECTED: AuditEvent.REJECT,
}


class DeviceLike(Protocol):
    """What the ledger needs of `cloud_bridge.policy.DeviceRef`."""

    @property
    def device_id(self) -> str: ...

    @property
    def tenant(self) -> str: ...


class DecisionLike(Protocol):
    """What the ledger needs of `cloud_bridge.policy.Decision`."""

    @property
    def allowed(self) -> bool: ...

    @property
    def code(self) -> str: ...

    @property
    def detail(self) -> str: ...

    @property
    def overrides(self) -> Mapping[str, Any]: ...


def clip_detail(detail: str) -> str:
    """Detail text as stored and acked: at most MAX_DETAIL characters."""
    return detail if len(detail) <= MAX_DETAIL else detail[: MAX_DETAIL - 3] + "..."


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One ledger row as the executor sees it."""

    device_id: str
    tenant: str
    intent_id: str
    app: str
    kind: str
    payload: dict[str, Any]
    attempt: int
    priority: int
    created: int  # ms since the epoch, from the envelope
    expires: int | None  # ms since the epoch, None = never
    state: EntryState
    code: str = ""
    detail: str = ""
    tries: int = 0  # executions started for this attempt
    next_run: float = 0.0  # seconds since the epoch
    overrides: dict[str, Any] = field(default_factory=dict)
    confirmed: bool = False
    updated: float = 0.0  # seconds since the epoch of the last state change

    def __post_init__(self) -> None:
        if not is_name(self.intent_id):
            raise ValueError(f"bad intent id {self.intent_id!r}")
        if self.attempt < 1:
            raise ValueError("attempt starts at 1")
        if self.tries < 0:
            raise ValueError("tries cannot be negative")
        if len(self.detail) > MAX_DETAIL:
            raise ValueError(f"detail over {MAX_DETAIL} characters")

    def expired_at(self, now: float) -> bool:
        """True when the intent's deadline has passed at `now` (seconds)."""
        return self.expires is not None and self.expires <= now * 1000

    def ack(self) -> Ack:
        """The ack the edge gets for this row in its current state."""
        return Ack(
            id=self.intent_id,
            state=self.state.ack_state,
            code=self.code,
            detail=self.detail,
            at=int(self.updated * 1000),
            app=self.app,
        )


def is_duplicate(state: EntryState, attempt: int, new_attempt: int) -> bool:
    """True when an envelope for an existing row is a duplicate: acked again, never decided or run."""
    return not (state in READMITTABLE and new_attempt > attempt)


def admission(
    env: Envelope, decide: Callable[[Envelope], DecisionLike], now: float
) -> tuple[EntryState, str, str, dict[str, Any]]:
    """(state, code, detail, overrides) for an envelope that is not a duplicate; pure but for `decide`.

    Already expired: `expired`, and `decide` is not called (it would spend a rate token).
    """
    if env.expires is not None and env.expires <= now * 1000:
        return EntryState.EXPIRED, "expired", "expired before it reached the bridge", {}
    decision = decide(env)
    if decision.allowed:
        return EntryState.QUEUED, "", "", dict(decision.overrides)
    return EntryState.REJECTED, decision.code or "policy", clip_detail(decision.detail), {}


class Ledger(Protocol):
    """Durable intent rows, deduplicated by (device_id, intent_id); free of any one database."""

    async def open(self) -> None:
        """Create or open the store; call once before anything else."""

    async def close(self) -> None:
        """Finish pending work and release the store."""

    async def admit(
        self,
        device: DeviceLike,
        envelopes: Sequence[Envelope],
        decide: Callable[[Envelope], DecisionLike],
        now: float,
    ) -> list[Ack]:
        """Record a batch in ONE durable transaction; one ack per envelope, in order.

        A duplicate (same device and id) is acked with its current state and `decide` is not called,
        unless the row ended failed/expired and the envelope carries a higher attempt (re-admitted).
        An envelope already expired is stored `expired`; otherwise `decide` says queued or rejected.
        """

    async def unconfirmed(self, device_id: str) -> list[Ack]:
        """Final results the edge has not confirmed yet, oldest first."""

    async def confirm(self, device_id: str, ids: Sequence[str]) -> int:
        """Mark final results as applied by the edge; returns how many rows changed."""

    async def usage_since(self, since: float) -> dict[tuple[str, str], int]:
        """(device_id, kind) -> intents admitted by policy since `since`, for daily quotas."""

    async def recover(self, now: float) -> int:
        """At start: put rows left running by a crash back in the queue; returns how many."""

    async def claim(self, kinds: Collection[str], limit: int, now: float) -> list[LedgerEntry]:
        """Move up to `limit` due queued rows of `kinds` to running (highest priority, oldest first)."""

    async def next_due(self, kinds: Collection[str]) -> float | None:
        """When the earliest queued row of `kinds` becomes due (seconds), or None."""

    async def finish(
        self, entry: LedgerEntry, state: EntryState, code: str, detail: str, now: float, integration: str
    ) -> Ack:
        """Record the final state of a running row; returns the ack to send."""

    async def reschedule(self, entry: LedgerEntry, next_run: float, code: str, detail: str, now: float) -> None:
        """Put a running row back in the queue, due at `next_run`, after a transient error."""

    async def audit(
        self, device_id: str | None = None, since: float | None = None, limit: int = 1000
    ) -> list[AuditRecord]:
        """Audit records, oldest first, optionally of one device and from `since` on."""

    async def purge(self, older_than: float) -> int:
        """Delete final rows the edge confirmed before `older_than`; returns how many."""
