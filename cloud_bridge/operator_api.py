"""Operators' intent operations: what `cloud-bridge intents` and the dashboard both call.

list_intents / show_intent / retry / cancel / purge take the store's `SqlIntents` (any process with the
store's settings may call them while nodes run) and return plain dataclasses with `to_json` (a row is an
IntentInfo, cloud_bridge.intent_info). A move the ledger's state table does not allow (cancel a delivered
intent, retry a queued one) raises LedgerStateError and changes nothing; an unknown intent raises
UnknownIntentError; both are BridgeErrors (one line, non-zero exit at the CLI).

- retry: a failed or expired row goes back to the queue as a new attempt (attempt + 1, so the provider
  sees a new idempotency key `device:intent:attempt`, as after the edge's own `retry`), due at once and
  without its old deadline. The device hears `accepted` for it (now if its node holds it, else on its
  next connect), then the new final result.
- cancel: a queued row ends failed with code `cancelled`; the device hears it as any final result. A
  running row is asked of the node holding it (cloud_bridge.cancel_asks), which ends it so if its call had
  not started (a row claimed ahead), else answers that it had: CallUnderWayError, the call finishes.
Both are audited (`requeue`, `cancel`) with the operator's name and the time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cloud_bridge.audit import AuditRecord
from cloud_bridge.cancel_asks import CANCEL_WAIT, wait_answer
from cloud_bridge.errors import AmbiguousIntentError, BadOperatorError, UnknownIntentError
from cloud_bridge.intent_info import IntentInfo
from cloud_bridge.intent_sql import IntentQuery, Purged, SqlIntents
from cloud_bridge.ledger import LedgerEntry
from cloud_bridge.ledger_plan import too_old_before
from cloud_bridge.ledger_states import EntryState, LedgerEvent
from intent_contract.names import is_name
from intent_contract.timefmt import format_ms

__all__ = [
    "IntentDetail",
    "IntentInfo",
    "IntentQuery",
    "Operated",
    "PurgeResult",
    "cancel",
    "list_intents",
    "purge",
    "retry",
    "show_intent",
]


def _when(seconds: float) -> str:
    return format_ms(int(seconds * 1000))


@dataclass(frozen=True, slots=True)
class IntentDetail:
    """One row and its audit trail (oldest first)."""

    intent: IntentInfo
    history: tuple[AuditRecord, ...]

    def to_json(self) -> dict[str, Any]:
        return {**self.intent.to_json(), "history": [r.to_json() for r in self.history]}


@dataclass(frozen=True, slots=True)
class Operated:
    """What a retry or cancel did."""

    action: str  # retry | cancel
    operator: str
    at: float
    intent: IntentInfo  # the row after the operation

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "operator": self.operator, "at": _when(self.at), "intent": self.intent.to_json()}

    def line(self) -> str:
        i = self.intent
        done = "retried" if self.action == "retry" else "cancelled"
        return f"{done} {i.device_id}/{i.intent_id}: now {i.state} (attempt {i.attempt})"


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What a purge deleted, and the bounds it used."""

    intents: int
    audit: int
    intents_before: float | None
    audit_before: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "intents": self.intents,
            "audit": self.audit,
            "intents_before": None if self.intents_before is None else _when(self.intents_before),
            "audit_before": None if self.audit_before is None else _when(self.audit_before),
        }


def _check_names(*names: str | None) -> None:
    for name in names:
        if name is not None and not is_name(name):
            raise UnknownIntentError(f"{name[:70]!r} is not a valid device or intent id")


def list_intents(intents: SqlIntents, query: IntentQuery) -> list[IntentInfo]:
    """Rows matching `query`, the most recently changed first."""
    _check_names(query.device_id, query.tenant)
    rows = intents.rows(query)
    revoked = {d for d in {e.device_id for e in rows} if intents.revoked(d)}  # a registry read per device listed
    return [IntentInfo.of(entry, revoked=entry.device_id in revoked) for entry in rows]


def _one(intents: SqlIntents, ids: Sequence[str]) -> LedgerEntry:
    """The row named by (device, intent id) or by an intent id alone (unique across devices)."""
    if not 1 <= len(ids) <= 2:
        raise UnknownIntentError("name an intent as DEVICE INTENT_ID, or INTENT_ID alone when it is unique")
    device_id, intent_id = (None, ids[0]) if len(ids) == 1 else (ids[0], ids[1])
    _check_names(device_id, intent_id)
    found = intents.find(intent_id, device_id)
    if not found:
        where = "" if device_id is None else f" of device {device_id}"
        raise UnknownIntentError(f"no intent {intent_id}{where} in the ledger")
    if len(found) > 1:
        devices = ", ".join(e.device_id for e in found[:3])
        raise AmbiguousIntentError(f"intent {intent_id} is known from several devices ({devices}): name the device")
    return found[0]


def show_intent(intents: SqlIntents, ids: Sequence[str]) -> IntentDetail:
    """One row and its audit trail: `ids` is (DEVICE, INTENT_ID) or (INTENT_ID,) when that id is unique."""
    entry = _one(intents, ids)
    info = IntentInfo.of(entry, revoked=intents.revoked(entry.device_id))
    return IntentDetail(info, tuple(intents.history(entry.device_id, entry.intent_id)))


def _operate(intents: SqlIntents, ids: Sequence[str], event: LedgerEvent, operator: str, now: float) -> Operated:
    if not is_name(operator):
        raise BadOperatorError(f"operator {operator[:70]!r} is not a valid name")
    row = _one(intents, ids)
    after = intents.operate(row.device_id, row.intent_id, event, operator, now)
    return Operated("retry" if event is LedgerEvent.REQUEUE else "cancel", operator, now, IntentInfo.of(after))


def retry(intents: SqlIntents, ids: Sequence[str], operator: str, now: float) -> Operated:
    """Queue a failed or expired intent again (a new attempt); LedgerStateError for any other state."""
    return _operate(intents, ids, LedgerEvent.REQUEUE, operator, now)


def cancel(
    intents: SqlIntents, ids: Sequence[str], operator: str, now: float, *, wait: float = CANCEL_WAIT
) -> Operated:
    """End a queued intent failed/`cancelled`, or a running one whose call has not started (its node is asked
    and answers within `wait` seconds: CallUnderWayError when the call had started, CancelPendingError when
    it did not answer); LedgerStateError for any other state."""
    if not is_name(operator):
        raise BadOperatorError(f"operator {operator[:70]!r} is not a valid name")
    row = _one(intents, ids)
    after = intents.operate(row.device_id, row.intent_id, LedgerEvent.CANCEL, operator, now)
    if after.state is EntryState.RUNNING:
        after = wait_answer(intents, after, operator, now, wait=wait)
    return Operated("cancel", operator, now, IntentInfo.of(after))


def purge(
    intents: SqlIntents,
    *,
    intents_age: float | None,
    audit_age: float | None,
    now: float,
    max_intent_age: float,
    stop: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PurgeResult:
    """Delete final, confirmed ledger rows unchanged for `intents_age` seconds and audit rows older than
    `audit_age` (None: keep them). Live rows and results their edge has not confirmed are never deleted,
    nor a row the bridge would still admit again (created less than `max_intent_age` seconds ago): the
    row is what makes a second copy of the intent a duplicate (ledger_plan.too_old_before)."""
    for age in (intents_age, audit_age):
        if age is not None and age <= 0:
            raise ValueError("a retention age must be positive")
    intents_before = None if intents_age is None else now - intents_age
    audit_before = None if audit_age is None else now - audit_age
    created_before = too_old_before(now, max_intent_age)
    report = None
    if progress is not None:
        report = _counting(progress, intents.purgeable(intents_before, audit_before, created_before))
    done: Purged = intents.purge(intents_before, audit_before, created_before, stop=stop, progress=report)
    return PurgeResult(done.intents, done.audit, intents_before, audit_before)


def _counting(progress: Callable[[int, int], None], total: int) -> Callable[[int], None]:
    """`progress` as (rows deleted, rows to delete), with the total counted before the purge began."""
    progress(0, total)

    def report(done: int) -> None:
        progress(done, max(done, total))  # rows that grew old meanwhile are deleted too

    return report


def state_of(text: str | None) -> EntryState | None:
    """A --state value as an EntryState (None: any); ValueError names the states."""
    if text is None:
        return None
    try:
        return EntryState(text)
    except ValueError:
        raise ValueError(f"unknown state {text!r}: one of {', '.join(s.value for s in EntryState)}") from None
