"""The executor's verdicts as a pure function: every branch before and after the integration call."""

from __future__ import annotations

from dataclasses import replace

import aiohttp
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_bridge.errors import BridgeError
from cloud_bridge.integrations import http as http_integration
from cloud_bridge.integrations import sms as sms_integration
from cloud_bridge.ledger import LedgerEntry
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.outcome import (
    UNANSWERED,
    Permanent,
    RetryPolicy,
    Returned,
    Transient,
    Verdict,
    after_run,
    before_run,
    retry_delay,
)
from intent_contract.backoff import compute_backoff

NOW = 1_800_000_000.0
POLICY = RetryPolicy(max_attempts=4, base=1.0, cap=10.0)


def entry(*, tries: int = 1, expires: float | None = None) -> LedgerEntry:
    """A running row on its `tries`-th try; `expires` in seconds since the epoch."""
    return LedgerEntry(
        device_id="dev-1",
        tenant="acme",
        intent_id="i-1",
        app="hvac",
        kind="email.send",
        payload={},
        attempt=1,
        priority=0,
        created=int(NOW * 1000),
        expires=None if expires is None else int(expires * 1000),
        state=EntryState.RUNNING,
        tries=tries,
    )


def test_retry_delay_is_backoff_until_max_attempts() -> None:
    options = {"max_attempts": 4, "base": 1.0, "cap": 10.0}
    assert retry_delay(1, jitter=1.0, **options) == 1.0  # type: ignore[arg-type]
    assert retry_delay(3, jitter=0.5, **options) == 2.0  # type: ignore[arg-type]
    assert retry_delay(3, jitter=0.5, retry_after=7.0, **options) == 7.0  # type: ignore[arg-type]
    assert retry_delay(3, jitter=1.0, retry_after=1.0, **options) == 4.0  # type: ignore[arg-type]
    assert retry_delay(4, jitter=0.5, **options) is None  # type: ignore[arg-type]


def test_a_row_past_its_deadline_expires_before_it_runs() -> None:
    verdict = before_run(entry(expires=NOW), now=NOW, revoked=True, max_attempts=8)
    assert verdict == Verdict(EntryState.EXPIRED, "expired", "expired before it ran")


def test_a_row_that_ran_before_and_is_past_its_deadline_says_how_its_last_try_ended() -> None:
    ran = replace(entry(tries=3, expires=NOW), code="http_503")
    assert before_run(ran, now=NOW, revoked=False, max_attempts=8) == Verdict(
        EntryState.EXPIRED, "expired", "expired before its next try; its last try ended http_503"
    )
    for code, said in (("http_timeout", "http_timeout"), ("resumed", "resumed"), ("", "without a result")):
        verdict = before_run(replace(ran, code=code), now=NOW, revoked=False, max_attempts=8)
        assert verdict is not None
        assert (
            verdict.detail
            == f"expired before its next try; its last try ended {said}: it may have reached the provider"
        )


def test_a_revoked_device_s_row_fails_before_it_runs() -> None:
    verdict = before_run(entry(expires=NOW + 1), now=NOW, revoked=True, max_attempts=8)
    assert verdict is not None
    assert (verdict.state, verdict.code) == (EntryState.FAILED, "device_revoked")
    assert verdict.settled  # no edge will confirm it: counted as confirmed, so retention can delete it
    assert before_run(entry(expires=NOW - 1), now=NOW, revoked=False, max_attempts=8).settled is False  # type: ignore[union-attr]


def test_a_live_row_of_a_device_in_good_standing_runs() -> None:
    assert before_run(entry(expires=NOW + 1), now=NOW, revoked=False, max_attempts=8) is None
    assert before_run(entry(), now=NOW, revoked=False, max_attempts=8) is None


def test_a_row_claimed_past_its_tries_fails_before_it_runs() -> None:
    """Its tries all ended without a result (the bridge stopped, or lost its lease, during each call)."""
    assert before_run(entry(tries=8), now=NOW, revoked=False, max_attempts=8) is None
    verdict = before_run(entry(tries=9), now=NOW, revoked=False, max_attempts=8)
    detail = "gave up after 8 tries, none with a result (max_attempts is 8)"
    assert verdict == Verdict(EntryState.FAILED, "tries_used_up", detail)
    assert before_run(entry(tries=9, expires=NOW), now=NOW, revoked=False, max_attempts=8).state is EntryState.EXPIRED  # type: ignore[union-attr]


def test_a_409_is_retried_only_after_a_try_the_provider_may_still_be_at() -> None:
    conflict = Permanent("http_409", "HTTP 409 Conflict")
    first = after_run(entry(tries=1), conflict, now=NOW, policy=POLICY, jitter=1.0)
    assert (first.state, first.code) == (EntryState.FAILED, "http_409")
    answered = after_run(replace(entry(tries=2), code="http_503"), conflict, now=NOW, policy=POLICY, jitter=1.0)
    assert answered.state is EntryState.FAILED
    for earlier in ("http_timeout", "http_connection", "resumed", "http_409", ""):
        verdict = after_run(replace(entry(tries=2), code=earlier), conflict, now=NOW, policy=POLICY, jitter=1.0)
        assert (verdict.state, verdict.code) == (EntryState.QUEUED, "http_409"), earlier
        assert verdict.detail == "HTTP 409 Conflict: the provider may still be at an earlier try with this key"
    last = after_run(
        replace(entry(tries=POLICY.max_attempts), code="http_409"), conflict, now=NOW, policy=POLICY, jitter=1.0
    )
    assert (last.state, last.code) == (EntryState.FAILED, "http_409")  # bounded by max_attempts as any retry


def test_a_return_is_delivered_with_the_provider_s_reference() -> None:
    verdict = after_run(entry(tries=4), Returned("250 queued as 42"), now=NOW, policy=POLICY, jitter=0.5)
    assert verdict == Verdict(EntryState.DELIVERED, "", "250 queued as 42")


def test_a_permanent_error_fails_however_many_tries_are_left() -> None:
    result = Permanent("bad_recipient", "550 no such user")
    verdict = after_run(entry(tries=1), result, now=NOW, policy=POLICY, jitter=0.5)
    assert verdict == Verdict(EntryState.FAILED, "bad_recipient", "550 no such user")


def test_a_transient_error_is_retried_after_the_backoff() -> None:
    verdict = after_run(entry(tries=3), Transient("timeout", "no answer"), now=NOW, policy=POLICY, jitter=0.5)
    assert verdict == Verdict(EntryState.QUEUED, "timeout", "no answer", retry_at=NOW + 2.0)


def test_a_provider_s_retry_after_longer_than_the_backoff_wins() -> None:
    result = Transient("rate_limited", "429", retry_after=30.0)
    verdict = after_run(entry(tries=1), result, now=NOW, policy=POLICY, jitter=1.0)
    assert verdict.retry_at == NOW + 30.0


def test_the_last_try_s_transient_error_fails_saying_so() -> None:
    verdict = after_run(entry(tries=4), Transient("timeout", "no answer"), now=NOW, policy=POLICY, jitter=0.5)
    assert verdict == Verdict(EntryState.FAILED, "timeout", "no answer (gave up after 4 tries)")


def test_a_retry_due_at_or_after_the_deadline_expires_now() -> None:
    result = Transient("timeout", "no answer", retry_after=5.0)
    verdict = after_run(entry(tries=1, expires=NOW + 5.0), result, now=NOW, policy=POLICY, jitter=0.0)
    assert verdict == Verdict(EntryState.EXPIRED, "expired", "expires before its retry: no answer")
    unanswered = Transient("http_timeout", "SocketTimeoutError talking to api.example", retry_after=5.0)
    verdict = after_run(entry(tries=1, expires=NOW + 5.0), unanswered, now=NOW, policy=POLICY, jitter=0.0)
    detail = "expires before its retry: SocketTimeoutError talking to api.example; it may have reached the provider"
    assert verdict == Verdict(EntryState.EXPIRED, "expired", detail)
    later = after_run(entry(tries=1, expires=NOW + 5.001), result, now=NOW, policy=POLICY, jitter=0.0)
    assert later.state is EntryState.QUEUED


def test_a_rate_limit_is_retried_at_the_provider_s_time_without_spending_a_try() -> None:
    """A 429 (or a 503 saying when) is the provider's load, not the intent: before December 2026 it spent a try,
    and a backlog against a provider allowing 5 calls/s ended 474 of 1,000 intents `failed`/`http_429`."""
    policy = RetryPolicy(max_attempts=2, base=1.0, cap=10.0, max_rate_limited=3)
    row = entry(tries=2)  # the last try max_attempts allows
    verdict = after_run(
        row, Transient("http_429", "HTTP 429 Too Many Requests", 1.0), now=NOW, policy=policy, jitter=1.0
    )
    detail = "rate limited 1 time in a row, not counted in max_attempts: HTTP 429 Too Many Requests"
    assert verdict == Verdict(EntryState.QUEUED, "http_429", detail, retry_at=NOW + 1.0, counted=False)
    for times in (2, 3):  # the count rides in the detail the row keeps
        row = replace(row, code=verdict.code, detail=verdict.detail)
        verdict = after_run(row, Transient("sms_503", "busy", 60.0), now=NOW, policy=policy, jitter=1.0)
        assert (verdict.retry_at, verdict.counted) == (NOW + 60.0, False)
        assert verdict.detail.startswith(f"rate limited {times} times in a row")
    row = replace(row, code=verdict.code, detail=verdict.detail)
    given_up = after_run(row, Transient("http_429", "slow", 1.0), now=NOW, policy=policy, jitter=1.0)
    assert (given_up.state, given_up.code) == (EntryState.FAILED, "http_429")
    assert given_up.detail == "slow (gave up after 4 rate-limit answers in a row; max_rate_limited is 3)"
    no_time = after_run(entry(tries=1), Transient("http_429", "slow"), now=NOW, policy=policy, jitter=0.5)
    assert (no_time.retry_at, no_time.counted) == (NOW + 0.5, False)  # no Retry-After: backoff on the answers
    plain_503 = after_run(entry(tries=2), Transient("http_503", "down"), now=NOW, policy=policy, jitter=0.5)
    assert plain_503.state is EntryState.FAILED  # a 503 that says nothing of when is an outage: it counts
    late = after_run(entry(expires=NOW + 1.0), Transient("http_429", "slow", 1.0), now=NOW, policy=policy, jitter=1.0)
    assert (late.state, late.detail) == (EntryState.EXPIRED, "expires before its retry: slow")


def test_a_row_rate_limited_at_its_first_try_and_then_past_its_deadline_says_so() -> None:
    row = replace(entry(tries=1, expires=NOW - 1.0), code="http_429", detail="rate limited 1 time in a row, not"
                  " counted in max_attempts: HTTP 429 Too Many Requests")  # fmt: skip
    verdict = before_run(row, now=NOW, revoked=False, max_attempts=4)
    assert verdict is not None and verdict.detail == "expired before its next try; its last try ended http_429"


def test_bad_policies_and_verdicts_are_refused() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="retry_base"):
        RetryPolicy(base=0.0)
    with pytest.raises(ValueError, match="retry_base"):
        RetryPolicy(base=10.0, cap=1.0)
    with pytest.raises(ValueError, match="retry_at"):
        Verdict(EntryState.QUEUED, "timeout", "")
    with pytest.raises(ValueError, match="retry_at"):
        Verdict(EntryState.FAILED, "timeout", "", retry_at=NOW)
    with pytest.raises(ValueError, match="cannot end"):
        Verdict(EntryState.RUNNING, "", "")
    with pytest.raises(ValueError, match="uncounted"):
        Verdict(EntryState.FAILED, "http_429", "", counted=False)
    with pytest.raises(ValueError, match="max_rate_limited"):
        RetryPolicy(max_rate_limited=0)


transients = st.builds(
    Transient,
    code=st.sampled_from(["timeout", "rate_limited", "integration_error"]),
    detail=st.text(max_size=20),
    retry_after=st.none() | st.floats(0.0, 1000.0),
)


@given(
    result=transients,
    tries=st.integers(1, 10),
    max_attempts=st.integers(1, 10),
    ttl=st.none() | st.floats(0.0, 2000.0),
    jitter=st.floats(0.0, 1.0),
)
def test_a_transient_error_ends_in_exactly_one_of_retry_fail_expire(
    result: Transient, tries: int, max_attempts: int, ttl: float | None, jitter: float
) -> None:
    policy = RetryPolicy(max_attempts=max_attempts, base=1.0, cap=300.0)
    row = entry(tries=tries, expires=None if ttl is None else NOW + ttl)
    verdict = after_run(row, result, now=NOW, policy=policy, jitter=jitter)
    if tries >= max_attempts:
        assert (verdict.state, verdict.code) == (EntryState.FAILED, result.code)
        return
    backoff = compute_backoff(tries, base=1.0, cap=300.0, jitter=jitter)
    due = NOW + max(backoff, result.retry_after or 0.0)
    if row.expired_at(due):
        assert (verdict.state, verdict.code) == (EntryState.EXPIRED, "expired")
    else:
        # Never sooner than the backoff or the provider asked, never at or past the deadline.
        assert verdict == Verdict(EntryState.QUEUED, result.code, result.detail, retry_at=due)
        assert row.expires is None or (verdict.retry_at is not None and verdict.retry_at * 1000 < row.expires)


@pytest.mark.parametrize(
    "error",
    [
        http_integration.aiohttp_error(TimeoutError(), "example.com"),
        http_integration.aiohttp_error(aiohttp.ServerDisconnectedError(), "example.com"),
        sms_integration.transport_error(httpx.ReadTimeout("slow"), "example.com", prefix="sms"),
        sms_integration.transport_error(httpx.RemoteProtocolError("cut"), "example.com", prefix="sms"),
    ],
)
def test_the_integrations_codes_for_a_try_without_an_answer_are_unanswered(error: BridgeError) -> None:
    """A cancel tells the device such a try may have reached the provider (intent_sql.cancel_detail_sql)."""
    assert error.code in UNANSWERED
