"""The intent state machine: plain data and pure functions, no I/O.

    accepted --bridge accepted--> forwarded --bridge result--> delivered | failed | expired | rejected
    accepted --deadline passed, never sent--> expired
    accepted --ops cancel, never sent--> cancelled
    accepted | forwarded --the bridge revoked this device--> failed
    accepted | forwarded --sent as a device this data dir no longer is (enrolled again)--> failed
    failed | expired --ops retry--> accepted (a new attempt: attempt + 1, no deadline, not sent)
    failed | expired --bridge rerun--> forwarded (an operator retried it at the bridge: the bridge's attempt)

A final state never changes again except by a retry (here, or at the bridge: an ack for a newer
attempt than this row's), so a late or repeated ack is a no-op.
Every state change of the store comes from this table: single rows through `step`, bulk SQL
(expiry, revocation, a new identity) through `sources`/`target`, and the SQL state sets through `sql_set`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from edge_outbox.errors import IllegalTransitionError
from intent_contract.sql_text import one_of


class State(StrEnum):
    ACCEPTED = "accepted"
    FORWARDED = "forwarded"
    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def final(self) -> bool:
        return self not in PENDING


def unknown_state(text: str) -> State:
    """A stand-in for a state stored by a newer outbox that this version does not know (`State(text)` refuses it).

    `ls` and `show` show it as its text (a KeyError traceback before), and no transition takes it: `step`
    raises IllegalTransitionError for any ops event (one line at the CLI), and a bridge event leaves it
    as it is (it counts as final). It is never a member: `State(...)`, iteration and `is` checks know
    only the states above.
    """
    member = str.__new__(State, text)
    member._name_, member._value_ = text.upper(), text
    return member


PENDING = frozenset({State.ACCEPTED, State.FORWARDED})
FINAL = frozenset(State) - PENDING
RETRYABLE = frozenset({State.FAILED, State.EXPIRED})


class Event(StrEnum):
    BRIDGE_ACCEPTED = "bridge_accepted"
    BRIDGE_DELIVERED = "bridge_delivered"
    BRIDGE_FAILED = "bridge_failed"
    BRIDGE_EXPIRED = "bridge_expired"
    BRIDGE_REJECTED = "bridge_rejected"
    DEADLINE = "deadline"
    CANCEL = "cancel"
    REVOKE = "revoke"
    RETRY = "retry"
    RERUN = "rerun"  # an ack for a newer attempt than ours: an operator retried it at the bridge
    UNSENDABLE = "unsendable"  # a stored payload the wire cannot carry (kept by an older, laxer intake)
    IDENTITY_CHANGED = "identity_changed"  # sent as another device: the data dir was enrolled again since


class Effect(StrEnum):
    """What a transition changes besides the state."""

    NEW_ATTEMPT = "new_attempt"  # attempt + 1, deadline cleared, not sent yet (goes out at once)
    BRIDGE_ATTEMPT = "bridge_attempt"  # the attempt becomes the bridge's (from the ack), the bridge holds it


_BRIDGE_RESULTS = {
    Event.BRIDGE_DELIVERED: State.DELIVERED,
    Event.BRIDGE_FAILED: State.FAILED,
    Event.BRIDGE_EXPIRED: State.EXPIRED,
    Event.BRIDGE_REJECTED: State.REJECTED,
}

# (state, event) -> next state. Events that need the intent never to have been sent are in UNSENT_ONLY.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (State.ACCEPTED, Event.BRIDGE_ACCEPTED): State.FORWARDED,
    (State.FORWARDED, Event.BRIDGE_ACCEPTED): State.FORWARDED,
    **{(s, e): target for s in PENDING for e, target in _BRIDGE_RESULTS.items()},
    (State.ACCEPTED, Event.DEADLINE): State.EXPIRED,
    (State.ACCEPTED, Event.CANCEL): State.CANCELLED,
    (State.ACCEPTED, Event.UNSENDABLE): State.REJECTED,
    **{(s, Event.REVOKE): State.FAILED for s in PENDING},
    **{(s, Event.IDENTITY_CHANGED): State.FAILED for s in PENDING},
    **{(s, Event.RETRY): State.ACCEPTED for s in RETRYABLE},
    **{(s, Event.RERUN): State.FORWARDED for s in RETRYABLE},
}
UNSENT_ONLY = frozenset({Event.DEADLINE, Event.CANCEL})
EFFECTS: dict[Event, frozenset[Effect]] = {
    Event.RETRY: frozenset({Effect.NEW_ATTEMPT}),
    Event.RERUN: frozenset({Effect.BRIDGE_ATTEMPT}),
}


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of an event: the next state, whether anything changes, and what else changes."""

    state: State
    changed: bool
    effects: frozenset[Effect] = frozenset()


def step(state: State, event: Event, *, sent: bool = False) -> Step:
    """Apply `event` to an intent in `state`; raises IllegalTransitionError and changes nothing if not allowed.

    A bridge event on a final state is a late or repeated ack: a no-op, never an error, because
    acks arrive at least once.
    """
    if (event in _BRIDGE_RESULTS or event is Event.BRIDGE_ACCEPTED) and state.final:
        return Step(state, changed=False)
    target = TRANSITIONS.get((state, event))
    if target is None:
        raise IllegalTransitionError(f"cannot {event.value.replace('_', ' ')} an intent that is {state.value}")
    if event in UNSENT_ONLY and sent:
        raise IllegalTransitionError(
            f"cannot {event.value} an intent already sent to the bridge; its result will come from there"
        )
    effects = EFFECTS.get(event, frozenset())
    return Step(target, changed=target is not state or bool(effects), effects=effects)


def sources(event: Event) -> frozenset[State]:
    """The states `event` moves an intent out of (for bulk SQL: `WHERE state IN sql_set(sources(e))`)."""
    return frozenset(state for state, e in TRANSITIONS if e is event and TRANSITIONS[(state, e)] is not state)


def target(event: Event) -> State:
    """The one state `event` leads to (bulk events have one target)."""
    (only,) = {to for (_state, e), to in TRANSITIONS.items() if e is event}
    return only


def sql_set(states: frozenset[State] | set[State]) -> str:
    """A SQL list of states, e.g. "('accepted', 'forwarded')", in a fixed order."""
    return "(" + ", ".join(f"'{s.value}'" for s in State if s in states) + ")"


def state_in(states: frozenset[State] | set[State], column: str = "state") -> str:
    """The SQL condition "`column` is one of `states`" (`intent_contract.sql_text.one_of`: one state is `=`)."""
    return one_of(column, [s.value for s in State if s in states])


def event_for_ack(ack_state: str) -> Event:
    """The event for an ack state received from the bridge."""
    try:
        return Event(f"bridge_{ack_state}")
    except ValueError:
        raise IllegalTransitionError(f"unknown ack state {ack_state!r}") from None
