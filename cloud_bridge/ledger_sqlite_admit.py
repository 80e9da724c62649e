"""Admission on the SQLite ledger: one judged batch written on the writer thread (the SQLite counterpart
of `store.pg_admit`).

Apart from `SqliteLedger` because it is one piece: read what the ledger knows of the batch's ids and the
limit states it spends, plan with the shared pure `ledger_plan.plan_admission`, write the plan (rows,
audit rows, limit states, usage). It runs inside the writer's transaction, so a batch is all or nothing.
"""

from __future__ import annotations

import sqlite3

from cloud_bridge.ledger import DeviceLike, pack
from cloud_bridge.ledger_plan import Known, Plan, Request, limited_kinds, plan_admission, tenant_limited_kinds
from cloud_bridge.ledger_sqlite_schema import AUDIT_ROWS
from cloud_bridge.ledger_states import EntryState, LedgerEvent, sources, state_in
from cloud_bridge.ratelimit import LimitState, tenant_subject
from cloud_bridge.usage import merged, tally
from cloud_bridge.usage_sql import UPSERT as USAGE_UPSERT
from cloud_bridge.usage_sql import upsert_rows
from intent_contract.codec import Ack
from intent_contract.sql_text import in_chunks
from intent_contract.sqlite_rows import ManyRows

# What admission (and replaying unconfirmed results) needs to know of an existing row.
KNOWN = "SELECT intent_id, app, state, attempt, code, detail, updated, digest FROM intents"


def known_of(row: sqlite3.Row) -> Known:
    """A row selected by `KNOWN`."""
    return Known(**{**dict(zip(row.keys(), row, strict=True)), "state": EntryState(row["state"])})


# Re-admission replaces a row only if it is still failed/expired with a lower attempt: the plan saw it so,
# and the single writer thread keeps it so; the guard states the rule in the SQL as well.
_UPSERT = ManyRows(
    "INSERT INTO intents (device_id, intent_id, tenant, app, kind, payload, attempt, priority, created, expires,"
    " state, code, detail, tries, next_run, overrides, confirmed, updated, digest, owner, lease_until)",
    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, 0, ?, ?, '', 0)",
    " ON CONFLICT (device_id, intent_id) DO UPDATE SET tenant = excluded.tenant, app = excluded.app,"
    " kind = excluded.kind, payload = excluded.payload, attempt = excluded.attempt, priority = excluded.priority,"
    " created = excluded.created, expires = excluded.expires, state = excluded.state, code = excluded.code,"
    " detail = excluded.detail, tries = 0, next_run = excluded.next_run, overrides = excluded.overrides,"
    " confirmed = 0, updated = excluded.updated, digest = excluded.digest, owner = '', lease_until = 0"
    f" WHERE {state_in(sources(LedgerEvent.QUEUE), 'intents.state')} AND intents.attempt < excluded.attempt",
)


_LIMITS_UPSERT = (
    "INSERT INTO limits (device_id, kind, tokens, bucket_at, quota_day, quota_used) VALUES (?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (device_id, kind) DO UPDATE SET tokens = excluded.tokens, bucket_at = excluded.bucket_at,"
    " quota_day = excluded.quota_day, quota_used = excluded.quota_used"
)


def admit(conn: sqlite3.Connection, device: DeviceLike, requests: list[Request], now: float) -> list[Ack]:
    """One batch: existing rows read in one query per chunk, the plan's rows and audit rows in a few statements."""
    return admit_plan(conn, device, requests, now).acks


def admit_plan(conn: sqlite3.Connection, device: DeviceLike, requests: list[Request], now: float) -> Plan:
    """`admit`, returning the whole plan written (its acks, and the rows it wrote)."""
    ids = list(dict.fromkeys(r.envelope.id for r in requests))
    known: dict[str, Known] = {}
    for chunk, chunk_marks in in_chunks(ids):
        query = f"{KNOWN} WHERE device_id = ? AND intent_id IN ({chunk_marks})"
        for row in conn.execute(query, (device.device_id, *chunk)):
            known[row["intent_id"]] = known_of(row)
    limits = _limit_states(conn, device.device_id, limited_kinds(requests))
    tenant = tenant_subject(device.tenant)
    whole = _limit_states(conn, tenant, tenant_limited_kinds(requests))
    plan = plan_admission(device, requests, known, limits, now, whole)
    _write_plan(conn, device, plan, now)
    conn.executemany(_LIMITS_UPSERT, [(tenant, k, *s.columns()) for k, s in plan.tenant_limits.items()])
    return plan


def _limit_states(conn: sqlite3.Connection, subject: str, kinds: set[str]) -> dict[str, LimitState]:
    """The stored limit state of a device or tenant (`subject`) for each of `kinds`."""
    query = "SELECT * FROM limits WHERE device_id = ? AND kind = ?"
    return {kind: LimitState.from_columns(conn.execute(query, (subject, kind)).fetchone()) for kind in sorted(kinds)}


def _write_plan(conn: sqlite3.Connection, device: DeviceLike, plan: Plan, now: float) -> None:
    _UPSERT.run(
        conn,
        [
            (device.device_id, w.envelope.id, device.tenant, w.envelope.app, w.envelope.kind, pack(w.envelope.payload),
             w.envelope.attempt, w.envelope.priority, w.envelope.created, w.envelope.expires, str(w.state), w.code,
             w.detail, now, pack(dict(w.overrides)), now, w.digest)
            for w in plan.writes
        ],
    )  # fmt: skip
    AUDIT_ROWS.run(
        conn,
        [
            (now, device.device_id, device.tenant, a.intent_id, a.kind, str(a.event), "", a.code, a.detail)
            for a in plan.audits
        ],
    )
    conn.executemany(_LIMITS_UPSERT, [(device.device_id, k, *s.columns()) for k, s in plan.limits.items()])
    tallies = merged(tally(device.tenant, device.device_id, a.kind, a.event, now) for a in plan.audits)
    conn.executemany(USAGE_UPSERT, upsert_rows(tallies, ""))
