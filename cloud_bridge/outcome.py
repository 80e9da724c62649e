"""What becomes of a ledger row around its run, decided without I/O: the executor applies the verdict.

Before the call: a row past its deadline expires, a revoked device's row fails. After it: a return is
delivered, a permanent error fails, a transient error is retried at a time with backoff, unless the
tries are used up (failed) or the deadline comes before that time (expired). The clock and the jitter
are inputs; nothing here awaits, reads the clock or touches the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud_bridge.ledger import LedgerEntry
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.provider_pause import rate_limited_detail, rate_limited_times, slow_down
from intent_contract.backoff import compute_backoff

# What a verdict may set: a final state, or back to the queue for a retry.
VERDICT_STATES = frozenset({EntryState.DELIVERED, EntryState.FAILED, EntryState.EXPIRED, EntryState.QUEUED})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how far apart transient errors are retried.

    The defaults retry a transient error (a 5xx, a timeout, a connection refused) for up to 58.5 minutes, 29
    on average (`window`): 19 retries, their ceilings doubling from 1 s to the cap of 300 s (reached at the
    10th), full jitter. Before December 2026 they were 8 tries, whose ceilings (1 to 64 s) summed to 127 s,
    about a minute on average: a provider down for two minutes failed every intent it caught, and the cap was
    never reached. An intent's deadline (ttl) still ends its retries first (`after_run`)."""

    max_attempts: int = 20  # tries per attempt, the first included
    base: float = 1.0  # seconds: the backoff ceiling of the first retry
    cap: float = 300.0  # seconds: the backoff ceiling never exceeds this
    max_rate_limited: int = 100  # rate-limit answers in a row (not counted in max_attempts) before giving up

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.max_rate_limited < 1:
            raise ValueError("max_attempts and max_rate_limited must be at least 1")
        if self.base <= 0 or self.cap < self.base:
            raise ValueError("need 0 < retry_base <= retry_cap")

    @property
    def window(self) -> float:
        """Seconds from the first try to the last at most (full jitter at its top); on average, half of it."""
        return sum(min(self.cap, self.base * 2.0 ** min(n - 1, 62)) for n in range(1, self.max_attempts))


@dataclass(frozen=True, slots=True)
class Returned:
    """The integration returned: the provider took the intent."""

    detail: str = ""


@dataclass(frozen=True, slots=True)
class Permanent:
    """The integration raised an error that will recur: the row fails."""

    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class Transient:
    """The integration raised an error worth retrying; `retry_after` is the provider's wish, in seconds."""

    code: str
    detail: str
    retry_after: float | None = None


CallResult = Returned | Permanent | Transient

# Codes of a try that ended without the provider's answer, so it may have taken the intent all the same: a
# timeout or a broken connection after the request went out, a reply that made no sense, a bridge stopped
# mid-call (`resumed`), an integration's own fault, and notify's `notify_failed` (some of a target's
# services may have taken it). A provider's refusal (an HTTP status, an SMTP reply) is an answer. The
# integrations' tests hold their codes for these faults in this set (tests/unit/test_outcome.py).
UNANSWERED = frozenset(
    {
        "http_timeout",
        "http_connection",
        "sms_timeout",
        "sms_connection",
        "smtp_connection",
        "smtp_protocol",
        "notify_timeout",
        "notify_failed",
        "integration_error",
        "resumed",
    }
)


# A provider that keeps idempotency keys answers a request whose key's earlier request it is still working on
# 409 Conflict (draft-ietf-httpapi-idempotency-key-header; Stripe). After a try of ours left unanswered (or such
# a 409), a retry's 409 is that, not a conflict of the intent's own: retried, it gets the earlier request's answer.
KEY_IN_USE = frozenset({"http_409"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with the row: end it in `state`, or (QUEUED) run it again at `retry_at`."""

    state: EntryState
    code: str
    detail: str
    retry_at: float | None = None  # seconds since the epoch; set exactly when state is QUEUED
    # No edge will ever confirm this result (its device is revoked): it counts as confirmed at once, so that
    # retention and `intents purge` can delete it like any other old result.
    settled: bool = False
    # A retry after the provider's rate limit (provider_pause.py): its try is given back, not counted in max_attempts.
    counted: bool = True

    def __post_init__(self) -> None:
        if self.state not in VERDICT_STATES:
            raise ValueError(f"a run cannot end {self.state}")
        if (self.state is EntryState.QUEUED) != (self.retry_at is not None):
            raise ValueError("retry_at is set for a retry and only for a retry")
        if self.settled and self.state is EntryState.QUEUED:
            raise ValueError("only a final verdict can be settled")
        if not self.counted and self.state is not EntryState.QUEUED:
            raise ValueError("only a retry can leave its try uncounted")


def retry_delay(
    tries: int,
    *,
    max_attempts: int,
    base: float,
    cap: float,
    jitter: float,
    retry_after: float | None = None,
) -> float | None:
    """Seconds until the next try after a transient error on try `tries`, or None to give up.

    Full-jitter backoff, raised to the provider's `retry_after` when that asks for longer.
    """
    if tries >= max_attempts:
        return None
    delay = compute_backoff(tries, base=base, cap=cap, jitter=jitter)
    if retry_after is not None and retry_after > delay:
        delay = retry_after
    return delay


def key_in_use(entry: LedgerEntry, code: str) -> bool:
    """Whether `code` answers a retry whose earlier try (left unanswered) the provider may still be working on."""
    earlier = entry.code
    return code in KEY_IN_USE and entry.tries > 1 and (not earlier or earlier in UNANSWERED or earlier in KEY_IN_USE)


def last_try(code: str) -> str:
    """How a row's last try ended, by the code it left, and whether the provider may have its request."""
    if not code or code in UNANSWERED:  # no code: its try was cut off before anything was recorded (a lost lease)
        return f"its last try ended {code or 'without a result'}: it may have reached the provider"
    return f"its last try ended {code}"


def before_run(entry: LedgerEntry, *, now: float, revoked: bool, max_attempts: int) -> Verdict | None:
    """The verdict that stops a claimed row before its call, or None to run it.

    `entry.tries` counts this claim: past `max_attempts`, every try of the attempt is used up without a result
    (each ended with no answer recorded: the bridge stopped or crashed, or the node lost its lease, during the
    call). Such an intent was run again at every restart, past any bound, even one that takes the bridge down.
    """
    if entry.expired_at(now):
        if entry.tries <= 1 and not rate_limited_times(entry.code, entry.detail):  # this claim is its first try
            return Verdict(EntryState.EXPIRED, "expired", "expired before it ran")
        # It ran before: "before it ran" told the app it was never sent, of a request the provider may have.
        return Verdict(EntryState.EXPIRED, "expired", f"expired before its next try; {last_try(entry.code)}")
    if revoked:
        # Revocation stops the device's queued work too, not only its connection.
        detail = "the device was revoked at the bridge before this ran"
        return Verdict(EntryState.FAILED, "device_revoked", detail, settled=True)
    if entry.tries > max_attempts:
        done = entry.tries - 1
        detail = f"gave up after {done} tries, none with a result (max_attempts is {max_attempts})"
        return Verdict(EntryState.FAILED, "tries_used_up", detail)
    return None


def after_run(entry: LedgerEntry, result: CallResult, *, now: float, policy: RetryPolicy, jitter: float) -> Verdict:
    """The verdict on `entry` after its call ended with `result` at `now`; `jitter` is a draw in [0, 1]."""
    if isinstance(result, Returned):
        return Verdict(EntryState.DELIVERED, "", result.detail)
    if isinstance(result, Permanent) and not key_in_use(entry, result.code):
        return Verdict(EntryState.FAILED, result.code, result.detail)
    if isinstance(result, Transient) and slow_down(result.code, result.retry_after):
        return _slowed(entry, result, now=now, policy=policy, jitter=jitter)
    if isinstance(result, Permanent):
        result = Transient(result.code, f"{result.detail}: the provider may still be at an earlier try with this key")
    delay = retry_delay(
        entry.tries,
        max_attempts=policy.max_attempts,
        base=policy.base,
        cap=policy.cap,
        jitter=jitter,
        retry_after=result.retry_after,
    )
    if delay is None:
        return Verdict(EntryState.FAILED, result.code, f"{result.detail} (gave up after {entry.tries} tries)")
    if entry.expired_at(now + delay):
        reached = "; it may have reached the provider" if result.code in UNANSWERED else ""
        return Verdict(EntryState.EXPIRED, "expired", f"expires before its retry: {result.detail}{reached}")
    return Verdict(EntryState.QUEUED, result.code, result.detail, retry_at=now + delay)


def _slowed(entry: LedgerEntry, result: Transient, *, now: float, policy: RetryPolicy, jitter: float) -> Verdict:
    """The verdict after a rate-limit answer (provider_pause.py): again at the provider's Retry-After (none given:
    backoff on the answers in a row), its try not counted, unless the deadline comes first or the answers in a
    row pass `max_rate_limited`."""
    times = rate_limited_times(entry.code, entry.detail) + 1
    if times > policy.max_rate_limited:
        detail = f"{result.detail} (gave up after {times} rate-limit answers in a row; max_rate_limited is "
        return Verdict(EntryState.FAILED, result.code, f"{detail}{policy.max_rate_limited})")
    delay = result.retry_after
    if delay is None:
        delay = compute_backoff(times, base=policy.base, cap=policy.cap, jitter=jitter)
    if entry.expired_at(now + delay):
        return Verdict(EntryState.EXPIRED, "expired", f"expires before its retry: {result.detail}")
    detail = rate_limited_detail(times, result.detail)
    return Verdict(EntryState.QUEUED, result.code, detail, retry_at=now + delay, counted=False)
