"""The bridge ledger: one durable row per (device, intent id), the contract every backend implements.

The ledger is what makes "executed once" hold: a row is unique per (device_id, intent_id), a duplicate
is acked again and never run again, and a final result stays until the edge confirms it. This module
holds the types and the `Ledger` protocol only; `ledger_sqlite.SqliteLedger` is the default backend.
Times: `now`, `next_run` and `at` arguments are seconds since the epoch (float); `created` and
`expires` are milliseconds, as on the wire; `Ack.at` is milliseconds.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

from cloud_bridge.audit import AuditEvent, AuditRecord
from cloud_bridge.ledger_states import EntryState
from cloud_bridge.ratelimit import Limits
from cloud_bridge.usage import UsageQuery, UsageRow
from intent_contract.codec import Ack
from intent_contract.names import is_name
from intent_contract.readable import readable
from intent_contract.wire import MAX_DETAIL  # Ack.detail refuses longer text; the ledger truncates before storing

if TYPE_CHECKING:
    from cloud_bridge.ledger_plan import Request

DEFAULT_LEASE = 30.0  # seconds a claim holds a running row unless its executor renews it
PURGE_BATCH = 5000  # rows a purge deletes per transaction (intent_sql.SqlIntents.purge; SQLite's is paced)


class DeviceLike(Protocol):
    """What the ledger needs of `cloud_bridge.policy.DeviceRef`."""

    @property
    def device_id(self) -> str: ...

    @property
    def tenant(self) -> str: ...


class DecisionLike(Protocol):
    """What the ledger needs of `cloud_bridge.policy.Decision`."""

    @property
    def allowed(self) -> bool: ...

    @property
    def code(self) -> str: ...

    @property
    def detail(self) -> str: ...

    @property
    def overrides(self) -> Mapping[str, Any]: ...

    @property
    def limits(self) -> Limits: ...

    @property
    def tenant_limits(self) -> Limits: ...


def clip_detail(detail: str) -> str:
    """Detail text as stored and acked: control characters written out (`intent_contract.readable`: a policy's
    reason can quote the payload, and PostgreSQL's text refuses U+0000), at most MAX_DETAIL characters."""
    detail = readable(detail)
    return detail if len(detail) <= MAX_DETAIL else detail[: MAX_DETAIL - 3] + "..."


@dataclass(frozen=True, slots=True, eq=False)
class ClaimOffer:
    """Free slots of an executor with nothing waiting, offered to one admission: the batch's newly queued
    rows of these kinds (at most `slots[kind]`) are claimed for `owner` in the admitting transaction. Each
    is spared a claim of its own (a trip through the writer and a commit) before it runs. Compared by
    identity: the executor keeps what it reserved for each offer."""

    owner: str
    lease: float
    slots: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One ledger row as the executor sees it."""

    device_id: str
    tenant: str
    intent_id: str
    app: str
    kind: str
    payload: dict[str, Any]
    attempt: int
    priority: int
    created: int  # ms since the epoch, from the envelope
    expires: int | None  # ms since the epoch, None = never
    state: EntryState
    code: str = ""
    detail: str = ""
    tries: int = 0  # executions started for this attempt, less those a provider's rate limit gave back
    next_run: float = 0.0  # seconds since the epoch
    overrides: dict[str, Any] = field(default_factory=dict)
    confirmed: bool = False
    updated: float = 0.0  # seconds since the epoch of the last state change
    owner: str = ""  # the executor (node) holding a running row
    lease_until: float = 0.0  # seconds since the epoch; a running row past it may be claimed again
    # The device was revoked when the row was claimed (a shared store reads it in the claim: a node runs no
    # row of a device revoked before its own watcher saw it); the executor also asks its watcher's set.
    revoked: bool = False
    # An operator's cancel of this running row, not yet acted on by the node holding it: "ATTEMPT OPERATOR",
    # then "ATTEMPT OPERATOR started" once that node answered that its call had started (cloud_bridge.cancel_asks).
    cancel_ask: str = ""

    def __post_init__(self) -> None:
        if not is_name(self.intent_id):
            raise ValueError(f"bad intent id {self.intent_id!r}")
        if self.attempt < 1:
            raise ValueError("attempt starts at 1")
        if self.tries < 0:
            raise ValueError("tries cannot be negative")
        if len(self.detail) > MAX_DETAIL:
            raise ValueError(f"detail over {MAX_DETAIL} characters")

    @property
    def cancel_pending(self) -> str | None:
        """The operator whose cancel of this attempt waits for its node's answer, or None."""
        attempt, _, operator = self.cancel_ask.partition(" ")
        if not operator or " " in operator or attempt != str(self.attempt):
            return None
        return operator

    def expired_at(self, now: float) -> bool:
        """True when the intent's deadline has passed at `now` (seconds)."""
        return self.expires is not None and self.expires <= now * 1000

    def ack(self) -> Ack:
        """The ack the edge gets for this row in its current state."""
        return Ack(
            id=self.intent_id,
            state=self.state.ack_state,
            code=self.code,
            detail=self.detail,
            at=int(self.updated * 1000),
            app=self.app,
            attempt=self.attempt,
        )


@dataclass(frozen=True, slots=True)
class LedgerDepth:
    """What the ledger holds that is not done with: rows per (state, kind), and the oldest queued row's age.

    Counted: queued and running rows, and final rows the edge has not confirmed yet (confirmed rows are
    history, deleted by `purge`). Read once per metrics scrape, never per message.
    """

    counts: Mapping[tuple[str, str], int] = field(default_factory=dict)
    oldest_queued: float | None = None  # seconds since the epoch the oldest queued row was queued (or retried)

    def oldest_queued_age(self, now: float) -> float:
        """Seconds the oldest queued row has waited (0 when none is queued)."""
        return 0.0 if self.oldest_queued is None else max(0.0, now - self.oldest_queued)


# One query per backend, each part on one of the ledger's partial indexes. `{unconfirmed}` is the
# backend's spelling of "confirmed is false".
DEPTH_SQL = (
    "SELECT state, kind, count(*) AS n, min(updated) AS oldest FROM intents WHERE state = 'queued'"
    " GROUP BY state, kind"
    " UNION ALL SELECT state, kind, count(*), NULL FROM intents WHERE state = 'running' GROUP BY state, kind"
    " UNION ALL SELECT state, kind, count(*), NULL FROM intents"
    " WHERE {unconfirmed} AND state NOT IN ('queued', 'running') GROUP BY state, kind"
)


# The tenants with work of one kind waiting: queued rows (a skip scan of the intents_tenant_due index,
# one probe per tenant however long the backlog) and running rows whose lease ran out. `{p}` is the
# backend's parameter marker; the parameters are kind, kind, now, kind.
WAITING_SQL = (
    "WITH RECURSIVE t(tenant) AS ("
    " SELECT (SELECT min(tenant) FROM intents WHERE state = 'queued' AND kind = {p})"
    " UNION ALL SELECT (SELECT min(i.tenant) FROM intents i WHERE i.state = 'queued' AND i.kind = {p}"
    " AND i.tenant > t.tenant) FROM t WHERE t.tenant IS NOT NULL)"
    " SELECT tenant FROM t WHERE tenant IS NOT NULL"
    " UNION SELECT tenant FROM intents WHERE state = 'running' AND lease_until < {p} AND kind = {p}"
)
WAITING_INDEX = "CREATE INDEX intents_tenant_due ON intents (kind, tenant, priority DESC, seq) WHERE state = 'queued'"


def depth_from_rows(rows: Sequence[Mapping[str, Any]]) -> LedgerDepth:
    """A LedgerDepth from DEPTH_SQL's rows."""
    oldest = [row["oldest"] for row in rows if row["oldest"] is not None]
    return LedgerDepth({(row["state"], row["kind"]): int(row["n"]) for row in rows}, min(oldest) if oldest else None)


def log_context(entry: LedgerEntry, **more: str) -> dict[str, str]:
    """The context of a log line about a ledger row (`extra`): who, which intent, what kind, and `more`."""
    return {"device_id": entry.device_id, "tenant": entry.tenant, "intent_id": entry.intent_id, "kind": entry.kind,
            **more}  # fmt: skip


def audit_params(
    at: float, entry: LedgerEntry, event: AuditEvent, integration: str, code: str, detail: str
) -> tuple[object, ...]:
    """An audit row's values for `entry`, in the column order every backend's audit insert lists."""
    return (at, entry.device_id, entry.tenant, entry.intent_id, entry.kind, str(event), integration, code, detail)


def lapsed_detail(owner: str) -> str:
    """The audit detail of a row taken over after its lease ran out."""
    return f"its executor ({owner or 'unnamed'}) stopped renewing the lease; running it again"


def pack(obj: object) -> bytes:
    """msgpack, as payloads and overrides are stored by every backend."""
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


class StoredRow(Protocol):
    """A stored row read by column name: a dict, a `sqlite3.Row`, a psycopg dict row."""

    def __getitem__(self, column: str, /) -> Any: ...


def entry_from_row(row: StoredRow) -> LedgerEntry:
    """A LedgerEntry from a stored row (payload and overrides as msgpack); columns it does not carry are
    not read."""
    return _entry(row, EntryState(row["state"]), row["tries"], row["updated"], row["owner"], row["lease_until"])


def held_by(entry: LedgerEntry) -> tuple[str, str, int, int]:
    """The parameters of a claim's hold on its row (device, intent, attempt, tries: `HELD` in the stores' SQL)."""
    return entry.device_id, entry.intent_id, entry.attempt, entry.tries


def claimed_entry(row: StoredRow, owner: str, until: float, now: float) -> LedgerEntry:
    """The entry of a row read just before `owner` claims it at `now`: running, one more try, under a lease
    until `until`. Built from the row at hand, where reading it back or merging dicts cost a claim most of
    its time (bench/findings.md F44)."""
    return _entry(row, EntryState.RUNNING, row["tries"] + 1, now, owner, until)


def _entry(row: StoredRow, state: EntryState, tries: int, updated: float, owner: str, until: float) -> LedgerEntry:
    return LedgerEntry(
        device_id=row["device_id"],
        tenant=row["tenant"],
        intent_id=row["intent_id"],
        app=row["app"],
        kind=row["kind"],
        payload=msgpack.unpackb(row["payload"], raw=False),
        attempt=row["attempt"],
        priority=row["priority"],
        created=row["created"],
        expires=row["expires"],
        state=state,
        code=row["code"],
        detail=row["detail"],
        tries=tries,
        next_run=row["next_run"],
        overrides=msgpack.unpackb(row["overrides"], raw=False),
        confirmed=bool(row["confirmed"]),
        updated=updated,
        owner=owner,
        lease_until=until,
        cancel_ask=_ask(row),
    )


def _ask(row: StoredRow) -> str:
    try:
        return str(row["cancel_ask"])
    except (KeyError, IndexError):  # a row read without that column
        return ""


class Ledger(Protocol):
    """Durable intent rows, deduplicated by (device_id, intent_id); free of any one database."""

    async def open(self) -> None:
        """Create or open the store; call once before anything else."""

    async def close(self) -> None:
        """Finish pending work and release the store."""

    @property
    def commits(self) -> int:
        """Write transactions committed by this process so far (for metrics and benchmarks)."""

    @property
    def claims_at_admission(self) -> bool:
        """Whether `admit_claiming` claims rows (else the executor need not offer its slots)."""

    async def admit(self, device: DeviceLike, requests: Sequence[Request], now: float) -> list[Ack]:
        """Record a judged batch (`ledger_plan.requests_for`) in ONE durable transaction; one ack per request.

        Reads the batch's existing rows and the device's limit state, applies `ledger_plan.plan_admission`
        and writes the plan; admissions of one device are serialized, also across bridge nodes.
        """

    async def admit_claiming(
        self, device: DeviceLike, requests: Sequence[Request], now: float, offer: ClaimOffer
    ) -> tuple[list[Ack], list[LedgerEntry]]:
        """`admit`, and in the same transaction claim the batch's newly queued rows that `offer` has slots
        for (highest priority first, then in batch order) as `claim` would; returns the acks and the claimed
        rows. A store may claim none and leave its rows to `claim`."""

    async def unconfirmed(self, device_id: str) -> list[Ack]:
        """Final results the edge has not confirmed yet, oldest first."""

    async def confirm(self, device_id: str, ids: Sequence[str], attempt: int | None = None) -> int:
        """Mark final results as applied by the edge; returns how many rows changed. With `attempt`, only rows
        of that attempt or an earlier one: a result an operator's retry made since the edge applied the one
        before stays unconfirmed (the edge has not had it)."""

    async def recover(self, now: float) -> int:
        """At an executor's start: put running rows no live executor holds back in the queue; returns how many.

        A single-node store (SQLite) has one executor, so every running row is an orphan; a shared store
        (PostgreSQL) leaves them to their leases, which `claim` takes over once they run out.
        """

    async def claim(
        self,
        kinds: Collection[str],
        limit: int,
        now: float,
        *,
        owner: str = "",
        lease: float = DEFAULT_LEASE,
        tenant: str | None = None,
        due_by: float | None = None,
    ) -> list[LedgerEntry]:
        """Move up to `limit` rows of `kinds` (of `tenant` only, when given) to running for `owner` until
        `now + lease`: first running rows whose lease ran out (audited `retry`/`lease_expired`), then due
        queued rows (highest priority, oldest first). Rows claimed by others meanwhile are skipped, never
        waited for. `due_by` (default `now`): only rows due, or whose lease ran out, by then."""

    async def waiting_tenants(self, kinds: Collection[str], now: float) -> list[str]:
        """Tenants with rows of `kinds` queued (due or not) or running past their lease at `now`, sorted."""

    async def renew(self, entries: Sequence[LedgerEntry], until: float) -> int:
        """Extend the leases of running rows this executor still holds; returns how many it still holds."""

    async def unclaim(self, entries: Sequence[LedgerEntry]) -> int:
        """Put rows this executor claimed and never started back in the queue as before their claim (`tries`
        as it was, no owner, not audited: a claim is not); returns how many it still held."""

    async def next_due(self, kinds: Collection[str]) -> float | None:
        """When the earliest queued row of `kinds` becomes due (seconds), or None."""

    async def finish(
        self,
        entry: LedgerEntry,
        state: EntryState,
        code: str,
        detail: str,
        now: float,
        integration: str,
        *,
        seconds: float | None = None,
    ) -> Ack:
        """Record the final state of the row as claimed in `entry`, and count it in usage with the provider
        call's `seconds` (None: no provider was called); returns the ack to send.

        A row no longer held by that claim (finished, or claimed again after its lease ran out: `tries`
        changed) is left alone and its current state returned.
        """

    async def reschedule(
        self, entry: LedgerEntry, next_run: float, code: str, detail: str, now: float, *, counted: bool = True
    ) -> None:
        """Put the row held by `entry`'s claim back in the queue, due at `next_run`, after a transient error.
        Not `counted` (a provider's rate limit: provider_pause.py), its claim's try is given back (`tries` - 1), and
        the row is taken as held only while its `next_run` is still the claim's: the next claim has the same
        `tries`, and a write tried again (its commit went through unanswered) must not take that one's row."""

    async def audit(
        self, device_id: str | None = None, since: float | None = None, limit: int = 1000, *, tenant: str | None = None
    ) -> list[AuditRecord]:
        """Audit records, oldest first, optionally of one device or tenant and from `since` on."""

    async def note(self, records: Sequence[AuditRecord]) -> None:
        """Append audit records of refusals that no ledger row stands for, in one transaction; those naming an
        intent count in usage as rejected."""

    async def usage(self, query: UsageQuery) -> list[UsageRow]:
        """Usage per the query's grouping, from the rollup the ledger keeps (cloud_bridge.usage)."""

    async def depth(self) -> LedgerDepth:
        """Rows not done with, per state and kind, and when the oldest queued one was queued (one query)."""

    async def ping(self) -> None:
        """Answer one trivial query, or raise: whether the store can be reached now (for /healthz)."""
