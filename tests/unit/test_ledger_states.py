"""The bridge ledger's transition table and the pure admission plan, without any database."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_bridge.audit import AuditEvent
from cloud_bridge.errors import LedgerStateError
from cloud_bridge.ledger_plan import DEFAULT_MAX_AGE, Known, Request, Verdict, body_digest, judge, plan_admission
from cloud_bridge.ledger_states import (
    AUDIT,
    FINISH,
    LIVE_STATES,
    NEW,
    OPERATOR_EVENTS,
    TRANSITIONS,
    EntryState,
    LedgerEvent,
    is_duplicate,
    sources,
    sql_states,
    state_in,
    step,
    target,
)
from cloud_bridge.policy import ALLOWED, Decision, DeviceRef
from cloud_bridge.ratelimit import Bucket, Limits, LimitState, RateRule
from intent_contract.codec import AckState, Envelope

NOW = 1_800_000_000.0
DEV = DeviceRef("dev-1", "acme", "boiler-7")


def test_every_event_has_one_target_and_is_audited_or_deliberately_not() -> None:
    for event in LedgerEvent:
        assert {t for (_, e), t in TRANSITIONS.items() if e is event} == {target(event)}
        assert event in AUDIT
    assert AUDIT[LedgerEvent.CLAIM] is None
    assert all(FINISH[state] in LedgerEvent and target(FINISH[state]) is state for state in FINISH)


def test_final_states_only_move_by_readmission_or_an_operators_retry() -> None:
    for state in EntryState:
        if not state.final:
            continue
        moves = {e for (s, e) in TRANSITIONS if s is state}
        expected = (
            {LedgerEvent.QUEUE, LedgerEvent.REJECT, LedgerEvent.EXPIRE, LedgerEvent.REQUEUE}
            if state in sources(LedgerEvent.QUEUE)
            else set()
        )
        assert moves == expected, state
    assert set(sources(LedgerEvent.QUEUE)) == {EntryState.FAILED, EntryState.EXPIRED}


@given(st.sampled_from([NEW, *EntryState]), st.sampled_from(list(LedgerEvent)))
def test_step_follows_the_table_or_raises_and_changes_nothing(state: EntryState | None, event: LedgerEvent) -> None:
    if (state, event) in TRANSITIONS:
        assert step(state, event) is TRANSITIONS[(state, event)]
    else:
        with pytest.raises(LedgerStateError):
            step(state, event)


def test_operators_retry_final_failed_or_expired_rows_and_cancel_only_queued_ones() -> None:
    assert set(sources(LedgerEvent.REQUEUE)) == {EntryState.FAILED, EntryState.EXPIRED}
    assert target(LedgerEvent.REQUEUE) is EntryState.QUEUED
    assert sources(LedgerEvent.CANCEL) == (EntryState.QUEUED,)
    assert target(LedgerEvent.CANCEL) is EntryState.FAILED
    assert {LedgerEvent.REQUEUE, LedgerEvent.CANCEL} == OPERATOR_EVENTS
    assert (AUDIT[LedgerEvent.REQUEUE], AUDIT[LedgerEvent.CANCEL]) == (AuditEvent.REQUEUE, AuditEvent.CANCEL)
    for refused in (EntryState.DELIVERED, EntryState.REJECTED, EntryState.QUEUED, EntryState.RUNNING):
        with pytest.raises(LedgerStateError, match=f"cannot requeue an intent that is {refused}"):
            step(refused, LedgerEvent.REQUEUE)
    for refused in (EntryState.RUNNING, EntryState.DELIVERED, EntryState.FAILED):
        with pytest.raises(LedgerStateError, match=f"cannot cancel an intent that is {refused}"):
            step(refused, LedgerEvent.CANCEL)


def test_sql_state_lists_come_from_the_table() -> None:
    assert sql_states(sources(LedgerEvent.CLAIM)) == "('queued')"
    assert sql_states(sources(LedgerEvent.QUEUE)) == "('failed', 'expired')"


def test_sql_state_lists_are_in_the_enums_order_whatever_the_order_given() -> None:
    # A frozenset's order follows the process's hash seed; SQLite matches a partial index's condition
    # term for term, so every process must spell `NOT IN ('queued', 'running')` the same way.
    assert sql_states([EntryState.RUNNING, EntryState.QUEUED]) == "('queued', 'running')"
    assert sql_states(LIVE_STATES) == "('queued', 'running')"
    assert state_in([EntryState.EXPIRED, EntryState.FAILED]) == "state IN ('failed', 'expired')"


def test_duplicate_rule() -> None:
    assert is_duplicate(EntryState.QUEUED, 1, 2)
    assert is_duplicate(EntryState.DELIVERED, 1, 9)
    assert is_duplicate(EntryState.REJECTED, 1, 2)
    assert is_duplicate(EntryState.FAILED, 2, 2)
    assert not is_duplicate(EntryState.FAILED, 1, 2)
    assert not is_duplicate(EntryState.EXPIRED, 1, 2)


def envelope(ident: str, *, attempt: int = 1, to: str = "a@example.com") -> Envelope:
    return Envelope(ident, "hvac-ui", "email.send", int(NOW * 1000), None, attempt, {"to": to})


def request(env: Envelope, verdict: Verdict | None = None) -> Request:
    return Request(env, verdict or Verdict(LedgerEvent.QUEUE), body_digest(env))


def test_plan_for_new_duplicate_conflicting_and_readmitted_rows() -> None:
    failed = envelope("f")
    known = {
        "q": Known("q", "hvac-ui", EntryState.QUEUED, 1, "", "", NOW - 5, body_digest(envelope("q"))),
        "f": Known("f", "hvac-ui", EntryState.FAILED, 1, "smtp_550", "no", NOW - 5, body_digest(failed)),
        "old": Known("old", "hvac-ui", EntryState.DELIVERED, 1, "", "", NOW - 5, ""),
    }
    batch = [
        request(envelope("new")),
        request(envelope("q")),
        request(envelope("q", to="other@example.com")),
        request(envelope("f", attempt=2)),
        request(envelope("old", to="anything@example.com")),
        request(envelope("new")),
    ]
    plan = plan_admission(DEV, batch, known, {}, NOW)
    assert [(a.id, a.state, a.code) for a in plan.acks] == [
        ("new", AckState.ACCEPTED, ""),
        ("q", AckState.ACCEPTED, ""),
        ("q", AckState.REJECTED, "id_conflict"),
        ("f", AckState.ACCEPTED, ""),
        ("old", AckState.DELIVERED, ""),  # no digest kept: never a conflict
        ("new", AckState.ACCEPTED, ""),  # the same id again in one batch: a duplicate
    ]
    assert [(w.envelope.id, w.state) for w in plan.writes] == [("new", EntryState.QUEUED), ("f", EntryState.QUEUED)]
    assert [(a.intent_id, a.event, a.code) for a in plan.audits] == [
        ("new", AuditEvent.ACCEPT, ""),
        ("q", AuditEvent.REJECT, "id_conflict"),
        ("f", AuditEvent.ACCEPT, ""),
    ]
    assert plan.limits == {}


def test_plan_spends_limits_only_on_what_would_be_queued() -> None:
    limits = Limits(RateRule(rate=1.0, burst=1), daily_quota=10)
    verdict = Verdict(LedgerEvent.QUEUE, limits=limits)
    refused = Verdict(LedgerEvent.REJECT, "policy_recipient", "no")
    batch = [request(envelope("a"), verdict), request(envelope("b"), refused), request(envelope("c"), verdict)]
    plan = plan_admission(DEV, batch, {}, {}, NOW)
    assert [(a.id, a.code) for a in plan.acks] == [("a", ""), ("b", "policy_recipient"), ("c", "rate_limited")]
    state = plan.limits["email.send"]
    assert state.bucket == Bucket(0.0, NOW)
    assert state.quota is not None
    assert state.quota.used == 1
    # An unchanged state is not written back.
    again = plan_admission(DEV, [request(envelope("a"), verdict)], {}, {"email.send": LimitState()}, NOW)
    assert again.limits["email.send"] != LimitState()


def test_verdicts_are_consistent() -> None:
    with pytest.raises(ValueError, match="no code"):
        Verdict(LedgerEvent.QUEUE, "x")
    with pytest.raises(ValueError, match="needs one"):
        Verdict(LedgerEvent.REJECT)
    with pytest.raises(ValueError, match="queues, rejects or expires"):
        Verdict(LedgerEvent.CLAIM)


def test_body_digest_covers_app_kind_and_payload_only() -> None:
    base = envelope("a")
    assert body_digest(base) == body_digest(Envelope("a", "hvac-ui", "email.send", 0, 5, 3, {"to": "a@example.com"}))
    assert body_digest(base) != body_digest(envelope("a", to="b@example.com"))
    assert body_digest(base) != body_digest(Envelope("a", "other", "email.send", 0, None, 1, base.payload))
    # Key order does not matter: the same JSON object is the same body.
    assert body_digest(Envelope("a", "x", "notify", 0, None, 1, {"a": 1, "b": 2})) == body_digest(
        Envelope("a", "x", "notify", 0, None, 1, {"b": 2, "a": 1})
    )


def test_the_plain_allowed_verdict_is_shared_and_one_with_overrides_or_limits_is_its_own() -> None:
    env = envelope("v")
    plain = judge(env, lambda _e: Decision(True), NOW, DEFAULT_MAX_AGE)
    assert plain is judge(envelope("w"), lambda _e: ALLOWED, NOW, DEFAULT_MAX_AGE)
    assert plain == Verdict(LedgerEvent.QUEUE)
    with pytest.raises(TypeError):
        plain.overrides["from"] = "x"  # type: ignore[index]  # shared: nobody may change it
    overrides = {"from": "a@example.com"}
    own = judge(env, lambda _e: Decision(True, overrides=overrides), NOW, DEFAULT_MAX_AGE)
    assert own == Verdict(LedgerEvent.QUEUE, overrides=overrides)
    assert own.overrides is not overrides  # a copy: the policy's own dict is not held
    limited = Decision(True, limits=Limits(rate=RateRule(1.0, 60)))
    assert judge(env, lambda _e: limited, NOW, DEFAULT_MAX_AGE).limits.any
