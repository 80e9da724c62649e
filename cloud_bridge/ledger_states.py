"""The bridge ledger's state machine: plain data and pure functions, no I/O.

    (new row) --queue--> queued --claim--> running --deliver/fail/expire--> delivered | failed | expired
    (new row) --reject--> rejected          running --retry/resume--> queued
    (new row) --expire--> expired           running --reclaim--> running (a lease ran out: another executor)
    failed | expired --queue/reject/expire--> ... (re-admitted: a higher attempt from the edge)
    failed | expired --requeue--> queued   (an operator's retry at the bridge: a new attempt)
    queued --cancel--> failed              (an operator's cancel, code `cancelled`; of a running row, its node
                                            ends it so unless its call started: cloud_bridge.cancel_sql)

Every backend derives its SQL from this table: an UPDATE for an event sets `target(event)` and only
touches rows whose state is in `sources(event)`, so no backend can make a move the table does not allow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum

from cloud_bridge.audit import AuditEvent
from cloud_bridge.errors import LedgerStateError
from intent_contract.codec import AckState
from intent_contract.sql_text import one_of


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
        return self not in LIVE_STATES

    @property
    def ack_state(self) -> AckState:
        """The state reported to the edge: live rows are `accepted`."""
        return AckState.ACCEPTED if not self.final else AckState(self.value)


LIVE_STATES = frozenset({EntryState.QUEUED, EntryState.RUNNING})
FINAL_STATES: tuple[EntryState, ...] = tuple(s for s in EntryState if s.final)


class LedgerEvent(StrEnum):
    """What can happen to a row."""

    QUEUE = "queue"  # admitted by policy (new, or re-admitted with a higher attempt)
    REJECT = "reject"  # refused at admission (policy, limits, too old)
    EXPIRE = "expire"  # past its deadline: on arrival, before it ran, before its retry
    CLAIM = "claim"  # an executor takes a due row, under a lease
    RECLAIM = "reclaim"  # the lease of a running row ran out (its executor died): taken again
    DELIVER = "deliver"  # the provider took it
    FAIL = "fail"  # permanent error, attempts used up, no integration, device revoked
    RETRY = "retry"  # transient error: back to the queue until its next run
    RESUME = "resume"  # the one executor of a single-node store restarted: back to the queue
    REQUEUE = "requeue"  # an operator retries a final row at the bridge (a new attempt)
    CANCEL = "cancel"  # an operator ends a queued row before it runs


NEW = None  # the source "no row yet" in the table
# A failed or expired row is admitted again when the edge sends a higher attempt (an ops retry).
READMITTABLE = frozenset({EntryState.FAILED, EntryState.EXPIRED})
_ADMISSION_TARGETS = {
    LedgerEvent.QUEUE: EntryState.QUEUED,
    LedgerEvent.REJECT: EntryState.REJECTED,
    LedgerEvent.EXPIRE: EntryState.EXPIRED,
}

# (state or NEW, event) -> next state. Anything not here is illegal.
TRANSITIONS: Mapping[tuple[EntryState | None, LedgerEvent], EntryState] = {
    **{(source, event): target for event, target in _ADMISSION_TARGETS.items() for source in (NEW, *READMITTABLE)},
    (EntryState.QUEUED, LedgerEvent.CLAIM): EntryState.RUNNING,
    (EntryState.RUNNING, LedgerEvent.RECLAIM): EntryState.RUNNING,
    (EntryState.RUNNING, LedgerEvent.DELIVER): EntryState.DELIVERED,
    (EntryState.RUNNING, LedgerEvent.FAIL): EntryState.FAILED,
    (EntryState.RUNNING, LedgerEvent.EXPIRE): EntryState.EXPIRED,
    (EntryState.RUNNING, LedgerEvent.RETRY): EntryState.QUEUED,
    (EntryState.RUNNING, LedgerEvent.RESUME): EntryState.QUEUED,
    **{(source, LedgerEvent.REQUEUE): EntryState.QUEUED for source in READMITTABLE},
    (EntryState.QUEUED, LedgerEvent.CANCEL): EntryState.FAILED,
}

# The audit event written with each ledger event (a claim is not audited: its result is).
AUDIT: Mapping[LedgerEvent, AuditEvent | None] = {
    LedgerEvent.QUEUE: AuditEvent.ACCEPT,
    LedgerEvent.REJECT: AuditEvent.REJECT,
    LedgerEvent.EXPIRE: AuditEvent.EXPIRE,
    LedgerEvent.CLAIM: None,
    LedgerEvent.RECLAIM: AuditEvent.RETRY,
    LedgerEvent.DELIVER: AuditEvent.DELIVER,
    LedgerEvent.FAIL: AuditEvent.FAIL,
    LedgerEvent.RETRY: AuditEvent.RETRY,
    LedgerEvent.RESUME: AuditEvent.RETRY,
    LedgerEvent.REQUEUE: AuditEvent.REQUEUE,
    LedgerEvent.CANCEL: AuditEvent.CANCEL,
}
# Events only an operator causes (`cloud-bridge intents retry|cancel`, the dashboard), audited with their name.
OPERATOR_EVENTS = frozenset({LedgerEvent.REQUEUE, LedgerEvent.CANCEL})

# The event that ends a running row in each final state.
FINISH: Mapping[EntryState, LedgerEvent] = {
    EntryState.DELIVERED: LedgerEvent.DELIVER,
    EntryState.FAILED: LedgerEvent.FAIL,
    EntryState.EXPIRED: LedgerEvent.EXPIRE,
}


def step(state: EntryState | None, event: LedgerEvent) -> EntryState:
    """The state after `event` on a row in `state` (None: no row yet); raises LedgerStateError if illegal."""
    target = TRANSITIONS.get((state, event))
    if target is None:
        where = "a new intent" if state is None else f"an intent that is {state.value}"
        raise LedgerStateError(f"cannot {event.value} {where}")
    return target


def target(event: LedgerEvent) -> EntryState:
    """The one state `event` leads to (every event has exactly one)."""
    (found,) = {t for (_, e), t in TRANSITIONS.items() if e is event}
    return found


def sources(event: LedgerEvent) -> tuple[EntryState, ...]:
    """The existing-row states `event` may apply to, in a stable order (for SQL `state IN (...)`)."""
    return tuple(s for s in EntryState if (s, event) in TRANSITIONS)


def sql_states(states: Iterable[EntryState]) -> str:
    """`('a', 'b')` for an SQL IN list of states (fixed enum values, never user input), in the enum's
    order whatever the order given. SQLite uses a partial index only for a query that repeats the
    index's condition term for term: `NOT IN ('running', 'queued')` does not match an index on
    `NOT IN ('queued', 'running')`, and a frozenset's order changes with each process's hash seed."""
    return "(" + ", ".join(f"'{value}'" for value in _in_order(states)) + ")"


def state_in(states: Iterable[EntryState], column: str = "state") -> str:
    """The SQL condition "`column` is one of `states`" (`intent_contract.sql_text.one_of`: one state is `=`),
    in the enum's order (see `sql_states`)."""
    return one_of(column, _in_order(states))


def _in_order(states: Iterable[EntryState]) -> list[str]:
    chosen = set(states)
    return [s.value for s in EntryState if s in chosen]


def is_duplicate(state: EntryState, attempt: int, new_attempt: int) -> bool:
    """True when an envelope for an existing row is a duplicate: acked again, never decided or run."""
    return not (state in READMITTABLE and new_attempt > attempt)
