"""The intent state machine, driven by arbitrary sequences of events."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_outbox.errors import IllegalTransitionError
from edge_outbox.states import (
    FINAL,
    PENDING,
    TRANSITIONS,
    UNSENT_ONLY,
    Effect,
    Event,
    State,
    event_for_ack,
    step,
    unknown_state,
)


def test_happy_path() -> None:
    s = State.ACCEPTED
    s = step(s, Event.BRIDGE_ACCEPTED, sent=True).state
    assert s is State.FORWARDED
    s = step(s, Event.BRIDGE_DELIVERED, sent=True).state
    assert s is State.DELIVERED


def test_result_may_overtake_accepted_ack() -> None:
    assert step(State.ACCEPTED, Event.BRIDGE_DELIVERED, sent=True).state is State.DELIVERED


def test_late_acks_on_final_states_are_no_ops() -> None:
    for final in FINAL:
        for event in (Event.BRIDGE_ACCEPTED, Event.BRIDGE_FAILED, Event.BRIDGE_DELIVERED):
            result = step(final, event, sent=True)
            assert result.state is final
            assert not result.changed


@pytest.mark.parametrize("event", [Event.CANCEL, Event.DEADLINE])
def test_cancel_and_deadline_only_before_sending(event: Event) -> None:
    assert step(State.ACCEPTED, event, sent=False).changed
    with pytest.raises(IllegalTransitionError, match="already sent"):
        step(State.ACCEPTED, event, sent=True)
    with pytest.raises(IllegalTransitionError):
        step(State.FORWARDED, event, sent=True)


def test_retry_only_from_failed_or_expired() -> None:
    assert step(State.FAILED, Event.RETRY).state is State.ACCEPTED
    assert step(State.EXPIRED, Event.RETRY).state is State.ACCEPTED
    for state in (State.DELIVERED, State.CANCELLED, State.REJECTED, *PENDING):
        with pytest.raises(IllegalTransitionError):
            step(state, Event.RETRY)


def test_ack_state_mapping() -> None:
    assert event_for_ack("delivered") is Event.BRIDGE_DELIVERED
    with pytest.raises(IllegalTransitionError):
        event_for_ack("teleported")


@given(st.lists(st.tuples(st.sampled_from(list(Event)), st.booleans()), max_size=40))
def test_any_sequence_follows_the_table(events: list[tuple[Event, bool]]) -> None:
    state = State.ACCEPTED
    for event, sent in events:
        before = state
        late_ack = before.final and event.value.startswith("bridge_")  # a no-op, never an error
        allowed = late_ack or ((before, event) in TRANSITIONS and not (event in UNSENT_ONLY and sent))
        try:
            result = step(state, event, sent=sent)
        except IllegalTransitionError:
            assert not allowed, f"{event} refused in {before} (sent={sent}) though the table allows it"
            continue
        assert allowed, f"{event} allowed in {before} (sent={sent}) though the table has no such transition"
        assert result.state is (before if late_ack else TRANSITIONS[(before, event)])
        assert result.changed == (result.state is not before)
        if before.final and event not in (Event.RETRY, Event.RERUN):
            assert result.state is before  # a final state only leaves by a retry (here, or at the bridge)
        state = result.state


def test_a_retry_at_the_bridge_brings_a_failed_or_expired_intent_back_to_forwarded() -> None:
    for state in (State.FAILED, State.EXPIRED):
        result = step(state, Event.RERUN)
        assert (result.state, result.changed) == (State.FORWARDED, True)
        assert Effect.BRIDGE_ATTEMPT in result.effects
    for state in (State.DELIVERED, State.REJECTED, State.CANCELLED, State.ACCEPTED, State.FORWARDED):
        with pytest.raises(IllegalTransitionError):
            step(state, Event.RERUN)


def test_a_state_this_version_does_not_know_takes_no_transition() -> None:
    newer = unknown_state("paused")
    assert (str(newer), newer.value) == ("paused", "paused")
    assert newer not in set(State) and newer.final
    with pytest.raises(ValueError, match="is not a valid State"):
        State("paused")  # parsing input still knows only the real states
    for event in (Event.RETRY, Event.CANCEL, Event.REVOKE, Event.DEADLINE, Event.RERUN):
        with pytest.raises(IllegalTransitionError, match="that is paused"):
            step(newer, event)
    assert step(newer, Event.BRIDGE_DELIVERED).changed is False
