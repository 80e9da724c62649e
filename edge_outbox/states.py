"""The intent state machine: plain data and pure functions, no I/O.

    accepted --bridge accepted--> forwarded --bridge result--> delivered | failed | expired | rejected
    accepted --deadline passed, never sent--> expired
    accepted --ops cancel, never sent--> cancelled
    failed | expired --ops retry--> accepted (a new attempt)

A final state never changes again except by an ops retry, so a late or repeated ack is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from edge_outbox.errors import IllegalTransitionError


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
    RETRY = "retry"


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
    **{(s, Event.RETRY): State.ACCEPTED for s in RETRYABLE},
}
UNSENT_ONLY = frozenset({Event.DEADLINE, Event.CANCEL})


@dataclass(frozen=True, slots=True)
class Step:
    """The outcome of an event: the next state, and whether anything changes at all."""

    state: State
    changed: bool


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
    return Step(target, changed=target is not state)


def event_for_ack(ack_state: str) -> Event:
    """The event for an ack state received from the bridge."""
    try:
        return Event(f"bridge_{ack_state}")
    except ValueError:
        raise IllegalTransitionError(f"unknown ack state {ack_state!r}") from None
