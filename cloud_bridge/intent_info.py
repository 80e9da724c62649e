"""One ledger row as operators see it: what `cloud-bridge intents` prints and the dashboard's intent table shows.

A pure value (no I/O) so that both the operator API and the dashboard's data protocol can name it; whether
a row may be retried or cancelled is read from the ledger's transition table, here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cloud_bridge.ledger import LedgerEntry
from cloud_bridge.ledger_states import TRANSITIONS, EntryState, LedgerEvent
from intent_contract.timefmt import format_ms


@dataclass(frozen=True, slots=True)
class IntentInfo:
    """One ledger row as operators see it (no payload: it may hold personal data)."""

    device_id: str
    intent_id: str
    tenant: str
    app: str
    kind: str
    state: str
    code: str
    detail: str
    attempt: int
    tries: int
    created: int  # ms since the epoch
    expires: int | None  # ms since the epoch
    updated: float  # seconds since the epoch
    confirmed: bool
    retryable: bool
    cancellable: bool
    cancel_asked: str | None = None  # the operator whose cancel of this running row waits for its node's answer
    # Seconds since the epoch a queued row waits for before its next try (its backoff, or the provider's
    # Retry-After, up to a day); None when it is not waiting for a retry.
    next_try: float | None = None

    @classmethod
    def of(cls, entry: LedgerEntry, *, revoked: bool = False) -> IntentInfo:
        """`revoked`: the row's device is revoked, so a retry is refused (its intents never run again)."""
        return cls(
            device_id=entry.device_id,
            intent_id=entry.intent_id,
            tenant=entry.tenant,
            app=entry.app,
            kind=entry.kind,
            state=str(entry.state),
            code=entry.code,
            detail=entry.detail,
            attempt=entry.attempt,
            tries=entry.tries,
            created=entry.created,
            expires=entry.expires,
            updated=entry.updated,
            confirmed=entry.confirmed,
            retryable=(entry.state, LedgerEvent.REQUEUE) in TRANSITIONS and not revoked,
            # a running row too: its node cancels it if its call has not started (cloud_bridge.cancel_asks)
            cancellable=(entry.state, LedgerEvent.CANCEL) in TRANSITIONS or entry.state is EntryState.RUNNING,
            cancel_asked=entry.cancel_pending if entry.state is EntryState.RUNNING else None,
            # A retry sets next_run past the change it records; an admission, a resume or an operator's retry
            # make the row due at once (next_run at or before `updated`).
            next_try=entry.next_run if entry.state is EntryState.QUEUED and entry.next_run > entry.updated else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "intent_id": self.intent_id,
            "tenant": self.tenant,
            "app": self.app,
            "kind": self.kind,
            "state": self.state,
            "code": self.code,
            "detail": self.detail,
            "attempt": self.attempt,
            "tries": self.tries,
            "created": format_ms(self.created),
            "expires": None if self.expires is None else format_ms(self.expires),
            "updated": format_ms(int(self.updated * 1000)),
            "confirmed": self.confirmed,
            "retryable": self.retryable,
            "cancellable": self.cancellable,
            "cancel_asked": self.cancel_asked,
            "next_try": None if self.next_try is None else format_ms(int(self.next_try * 1000)),
        }
