"""Admission as a pure plan: what a batch does to the ledger, decided from the rows it touches.

Two steps, so that no policy code runs inside a database transaction:
- before the transaction, `judge` gives each envelope a `Verdict`: what happens if it is new
  (queued with overrides and limits to spend, rejected with a code, or expired);
- inside it, the backend reads the existing rows of the batch and the limit state of the device and
  (when it has limits of its own) of its tenant, and `plan_admission` returns the acks, the rows to
  write, the audit rows and the new limit states. The backend writes the plan; every backend shares
  this function, so they cannot disagree.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from cloud_bridge.audit import AuditEvent
from cloud_bridge.ledger import DecisionLike, DeviceLike, clip_detail
from cloud_bridge.ledger_states import AUDIT, EntryState, LedgerEvent, is_duplicate, step
from cloud_bridge.ratelimit import NO_LIMITS, Limits, LimitState, take
from intent_contract.codec import Ack
from intent_contract.envelope import Envelope

DEFAULT_MAX_AGE = 90 * 86_400.0  # seconds; see docs/ledger.md "Too old"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What admission does with an envelope that is not a duplicate."""

    event: LedgerEvent
    code: str = ""
    detail: str = ""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    limits: Limits = NO_LIMITS
    tenant_limits: Limits = NO_LIMITS

    def __post_init__(self) -> None:
        if self.event not in (LedgerEvent.QUEUE, LedgerEvent.REJECT, LedgerEvent.EXPIRE):
            raise ValueError(f"a verdict queues, rejects or expires, not {self.event}")
        if (self.event is LedgerEvent.QUEUE) == bool(self.code):
            raise ValueError("a queued verdict has no code; a refusal needs one")


QUEUED = Verdict(LedgerEvent.QUEUE, overrides=MappingProxyType({}))  # queued, nothing to add, nothing to spend


class Request(NamedTuple):
    """One envelope of a batch with its verdict and the digest of its body.

    `Request`, `Known`, `Write` and `AuditRow` are immutable like the frozen dataclasses of STYLE.md but
    NamedTuples: admission builds each once per intent, in 0.25 us where a frozen dataclass took 0.65-0.8
    (bench/findings.md F40).
    """

    envelope: Envelope
    verdict: Verdict
    digest: str


# `json.dumps` with these options, without building a new encoder per call (bench/findings.md F31). NaN and
# the infinities raise ValueError: msgpack floats JSON has no word for (`requests_for` refuses them).
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str, allow_nan=False).encode
# The same text from the C encoder `encode` itself builds on every call (json.encoder.c_make_encoder, which the
# standard library keeps beside its pure-Python one), built once: 0.8 us less per intent. No marker dict: a
# payload decoded from msgpack cannot refer to itself. tests/unit/test_ledger_plan_digest.py holds the two equal.
_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_canonical_c = (
    None
    if _c_encoder is None
    else _c_encoder(None, str, json.encoder.encode_basestring_ascii, None, ":", ",", True, False, False)
)


def canonical_text(value: object) -> str:
    """`value` as canonical JSON: sorted keys, no spaces, ASCII, ValueError for NaN and the infinities."""
    if _canonical_c is None:
        return _canonical(value)
    return "".join(_canonical_c(value, 0))


def body_digest(envelope: Envelope) -> str:
    """What must not change under one intent id: app, kind and payload (not attempt, times or priority)."""
    text = canonical_text([envelope.app, envelope.kind, envelope.payload])
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def too_old_before(now: float, max_age: float) -> float:
    """The `created` time (ms) before which admission at `now`, or any time after, refuses an envelope
    `too_old`. Retention keeps a row until its `created` is before this: a row deleted sooner would let the
    same intent (a USB bundle imported again, the same batch sent again) be admitted and run a second time."""
    return (now - max_age) * 1000


def judge(envelope: Envelope, decide: Callable[[Envelope], DecisionLike], now: float, max_age: float) -> Verdict:
    """The verdict for one envelope at `now` (seconds); pure but for `decide`, which is not called when
    the envelope is already expired or older than `max_age` seconds."""
    if envelope.expires is not None and envelope.expires <= now * 1000:
        return Verdict(LedgerEvent.EXPIRE, "expired", "expired before it reached the bridge")
    if envelope.created < too_old_before(now, max_age):
        days = max_age / 86_400
        return Verdict(LedgerEvent.REJECT, "too_old", f"created more than {days:g} days ago; the bridge refuses it")
    decision = decide(envelope)
    if not decision.allowed:
        return Verdict(LedgerEvent.REJECT, decision.code or "policy", clip_detail(decision.detail))
    overrides, limits, whole = decision.overrides, decision.limits, decision.tenant_limits
    if not overrides and not limits.any and not whole.any:
        return QUEUED  # the usual verdict: shared, since a frozen dataclass built per envelope cost 1.5 us
    return Verdict(LedgerEvent.QUEUE, overrides=dict(overrides), limits=limits, tenant_limits=whole)


def requests_for(
    envelopes: Sequence[Envelope], decide: Callable[[Envelope], DecisionLike], now: float, max_age: float
) -> list[Request]:
    """A batch judged and digested, in order, ready for `Ledger.admit`.

    An envelope whose payload holds NaN or an infinity (the edge's intake refuses them; a device could
    still send them as msgpack floats) is refused without a decision: a provider would get them as JSON
    no parser reads.
    """
    requests: list[Request] = []
    for env in envelopes:
        try:
            digest = body_digest(env)
        except ValueError:
            requests.append(Request(env, NOT_JSON, ""))
        else:
            requests.append(Request(env, judge(env, decide, now, max_age), digest))
    return requests


NOT_JSON = Verdict(LedgerEvent.REJECT, "schema_violation", "not JSON data: NaN or an infinity in the payload")


class Known(NamedTuple):
    """An existing row, as much of it as admission needs."""

    intent_id: str
    app: str
    state: EntryState
    attempt: int
    code: str
    detail: str
    updated: float
    digest: str  # "" for rows written before digests were kept: never a conflict

    def ack(self) -> Ack:
        final = self.state.final
        return Ack(
            self.intent_id,
            self.state.ack_state,
            self.code if final else "",
            self.detail if final else "",
            int(self.updated * 1000),
            self.app,
            self.attempt,
        )


class Write(NamedTuple):
    """A row to insert, or to re-admit when the stored one is failed/expired with a lower attempt."""

    envelope: Envelope
    state: EntryState
    code: str
    detail: str
    overrides: Mapping[str, Any]
    digest: str


class AuditRow(NamedTuple):
    """One audit record of an admission: (intent id, kind, event, code, detail)."""

    intent_id: str
    kind: str
    event: AuditEvent
    code: str
    detail: str


@dataclass(slots=True)
class Plan:
    """What one admission writes; `acks` are in the batch's order."""

    acks: list[Ack] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    audits: list[AuditRow] = field(default_factory=list)
    limits: dict[str, LimitState] = field(default_factory=dict)  # kind -> state after this batch
    tenant_limits: dict[str, LimitState] = field(default_factory=dict)  # the tenant's, kind -> state after it


def limited_kinds(requests: Sequence[Request]) -> set[str]:
    """Kinds whose limit state the backend must read (and lock) before planning."""
    return {r.envelope.kind for r in requests if r.verdict.event is LedgerEvent.QUEUE and r.verdict.limits.any}


def tenant_limited_kinds(requests: Sequence[Request]) -> set[str]:
    """Kinds whose tenant-wide limit state (`ratelimit.tenant_subject`) the backend must read and lock."""
    return {r.envelope.kind for r in requests if r.verdict.event is LedgerEvent.QUEUE and r.verdict.tenant_limits.any}


CONFLICT_DETAIL = "this intent id was used before with a different body; the first one stands"


def plan_admission(
    device: DeviceLike,
    requests: Sequence[Request],
    known: Mapping[str, Known],
    limits: Mapping[str, LimitState],
    now: float,
    tenant_limits: Mapping[str, LimitState] | None = None,
) -> Plan:
    """The plan for a batch, given the existing rows (by intent id) and the limit states by kind of the
    device and of its tenant (all its devices together).

    A duplicate is acked with its row's state and spends nothing; the same id with a different body is
    answered `rejected/id_conflict` and changes nothing; a failed/expired row with a higher attempt is
    re-admitted; limits are spent only by envelopes that would otherwise be queued, the device's and the
    tenant's together: one that refuses spends neither.
    """
    plan = Plan()
    rows = dict(known)
    states = dict(limits)
    whole = dict(tenant_limits or {})
    at = int(now * 1000)
    for request in requests:
        env, verdict = request.envelope, request.verdict
        row = rows.get(env.id)
        if row is not None and row.digest and request.digest != row.digest:
            plan.acks.append(Ack(env.id, EntryState.REJECTED.ack_state, "id_conflict", CONFLICT_DETAIL, at, env.app))
            plan.audits.append(AuditRow(env.id, env.kind, AuditEvent.REJECT, "id_conflict", CONFLICT_DETAIL))
            continue
        if row is not None and is_duplicate(row.state, row.attempt, env.attempt):
            plan.acks.append(row.ack())  # acked again, never decided or run again
            continue
        event, code, detail = verdict.event, verdict.code, verdict.detail
        if event is LedgerEvent.QUEUE and (verdict.limits.any or verdict.tenant_limits.any):
            refused, why = _spend(verdict, env.kind, states, whole, now)
            if refused:
                event, code, detail = LedgerEvent.REJECT, refused, why
        state = step(None if row is None else row.state, event)
        overrides = verdict.overrides if event is LedgerEvent.QUEUE else {}
        plan.writes.append(Write(env, state, code, detail, overrides, request.digest))
        audit = AUDIT[event]
        assert audit is not None
        plan.audits.append(AuditRow(env.id, env.kind, audit, code, detail))
        # The same id later in this batch is a duplicate of this row.
        rows[env.id] = Known(env.id, env.app, state, env.attempt, code, detail, now, request.digest)
        plan.acks.append(Ack(env.id, state.ack_state, code, detail, at, env.app, env.attempt))
    plan.limits = {kind: state for kind, state in states.items() if state != limits.get(kind)}
    plan.tenant_limits = {kind: s for kind, s in whole.items() if s != (tenant_limits or {}).get(kind)}
    return plan


def _spend(
    verdict: Verdict, kind: str, device: dict[str, LimitState], tenant: dict[str, LimitState], now: float
) -> tuple[str, str]:
    """Spend one `kind` from the device's limits, then the tenant's; ("", "") or the refusal (code, detail).

    A refusal by the tenant's limits leaves the device's unspent (their buckets may have refilled).
    """
    mine = device.get(kind, LimitState())
    if verdict.limits.any:
        refused, why, mine = take(verdict.limits, mine, kind, now)
        if refused:
            device[kind] = mine
            return refused, why
    if verdict.tenant_limits.any:
        refused, why, tenant[kind] = take(verdict.tenant_limits, tenant.get(kind, LimitState()), kind, now)
        if refused:
            return refused, f"tenant's {why}"
    if verdict.limits.any:
        device[kind] = mine
    return "", ""
