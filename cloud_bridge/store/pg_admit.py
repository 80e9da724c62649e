"""Admission on PostgreSQL in groups: every batch waiting on a node is admitted in one transaction with a
fixed number of statements, whatever the number of batches.

One statement at a time per batch (read its rows, write them, audit them), each a round trip through
the event loop that also serves hundreds of TLS devices, held a node to ~100 batches/s. A group:
1. takes the advisory locks of its devices, and of their tenants that have limits of their own, in one
   statement, ordered by key (so groups on different nodes cannot deadlock, and two nodes never admit
   one device at once, nor spend one tenant's limits at once);
2. reads which of its devices are revoked (their batches are not admitted: a node polls revocations,
   and admitted a batch queued or judged before it learned), the existing rows of every (device,
   intent id) and the limit state of every (device, kind) and (tenant, kind);
3. plans each batch with the shared `ledger_plan.plan_admission`, in arrival order, each seeing what
   the batches before it in the group wrote;
4. writes every row, audit row and limit state with one statement each (rows as one JSON document);
5. notifies `bridge_work` and commits; only then are the callers answered.
When a group fails for anything but the store being unreachable, its batches are admitted again one by
one, so a value the store refuses in one device's batch fails that batch alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from base64 import b64encode
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout

from cloud_bridge.errors import BridgeError
from cloud_bridge.ledger import DeviceLike, pack
from cloud_bridge.ledger_plan import Known, Plan, Request, limited_kinds, plan_admission, tenant_limited_kinds
from cloud_bridge.ledger_states import EntryState, LedgerEvent, sources, state_in
from cloud_bridge.ratelimit import LimitState, tenant_subject
from cloud_bridge.store.pg_pools import AsyncConn, PgPools, converted
from cloud_bridge.usage import merged, tally
from cloud_bridge.usage_sql import UPSERT as USAGE_UPSERT
from cloud_bridge.usage_sql import sql, upsert_rows

logger = logging.getLogger(__name__)

WORK_CHANNEL = "bridge_work"
_MAX_GROUP = 200  # batches per transaction
# Groups in flight at once: while one waits for its commit to reach the disk, the next one is read and
# written. Two groups with a device in common are ordered by that device's lock.
WRITERS = 2

_LOCK = (
    "SELECT pg_advisory_xact_lock(h) FROM"
    " (SELECT DISTINCT hashtextextended(k, 0) AS h FROM unnest(%s::text[]) AS k ORDER BY h) AS s"
)
_KNOWN = (
    "SELECT i.device_id, i.intent_id, i.app, i.state, i.attempt, i.code, i.detail, i.updated, i.digest"
    " FROM intents i JOIN unnest(%s::text[], %s::text[]) AS k(d, id) ON i.device_id = k.d AND i.intent_id = k.id"
)
# Devices revoked by now: their batches are admitted no more (a node polls revocations every 0.5 s; a batch
# it judged meanwhile, or queued before it dropped the session, was admitted and run after the revocation).
# A revocation committed after this read orders after the admission: the executors end its rows unrun.
_REVOKED = "SELECT device_id FROM devices WHERE device_id = ANY(%s) AND revoked_at IS NOT NULL"
_LIMITS = (
    "SELECT l.* FROM limits l JOIN unnest(%s::text[], %s::text[]) AS k(d, kind)"
    " ON l.device_id = k.d AND l.kind = k.kind"
)
# Re-admission replaces a row only if it is still failed/expired with a lower attempt (the plan saw it
# so under the device lock); any other existing row is left alone.
_UPSERT = (
    "INSERT INTO intents (device_id, intent_id, tenant, app, kind, payload, attempt, priority, created, expires,"
    " state, code, detail, tries, next_run, overrides, confirmed, updated, digest, owner, lease_until)"
    " SELECT u.d, u.i, u.t, u.a, u.k, decode(u.p, 'base64'), u.n, u.r, u.c, u.x, u.s, u.o, u.e, 0, u.w,"
    " decode(u.v, 'base64'), false, u.w, u.g, '', 0"
    " FROM json_to_recordset(%s::json) AS u(d text, i text, t text, a text, k text, p text, n int, r int,"
    " c bigint, x bigint, s text, o text, e text, v text, g text, w float8)"
    " ON CONFLICT (device_id, intent_id) DO UPDATE SET tenant = excluded.tenant, app = excluded.app,"
    " kind = excluded.kind, payload = excluded.payload, attempt = excluded.attempt, priority = excluded.priority,"
    " created = excluded.created, expires = excluded.expires, state = excluded.state, code = excluded.code,"
    " detail = excluded.detail, tries = 0, next_run = excluded.next_run, overrides = excluded.overrides,"
    " confirmed = false, updated = excluded.updated, digest = excluded.digest, owner = '', lease_until = 0"
    f" WHERE {state_in(sources(LedgerEvent.QUEUE), 'intents.state')} AND intents.attempt < excluded.attempt"
)
_AUDIT = (
    "INSERT INTO audit (at, device_id, tenant, intent_id, kind, event, integration, code, detail)"
    " SELECT u.w, u.d, u.t, u.i, u.k, u.v, '', u.o, u.e"
    " FROM json_to_recordset(%s::json) AS u(w float8, d text, t text, i text, k text, v text, o text, e text)"
)
_LIMITS_UPSERT = (
    "INSERT INTO limits (device_id, kind, tokens, bucket_at, quota_day, quota_used)"
    " SELECT * FROM unnest(%s::text[], %s::text[], %s::float8[], %s::float8[], %s::int[], %s::int[])"
    " ON CONFLICT (device_id, kind) DO UPDATE SET tokens = excluded.tokens, bucket_at = excluded.bucket_at,"
    " quota_day = excluded.quota_day, quota_used = excluded.quota_used"
)

_USAGE_UPSERT = sql(USAGE_UPSERT, "%s")


@dataclass(slots=True)
class _Admission:
    device: DeviceLike
    requests: list[Request]
    now: float
    future: asyncio.Future[list[Any]]


def known_row(row: dict[str, Any]) -> Known:
    return Known(**{k: v for k, v in row.items() if k != "device_id"} | {"state": EntryState(row["state"])})


def _unreachable(exc: BaseException) -> bool:
    """Whether an admission failed because of the store (its connection or pool), not of what it held."""
    cause = exc.__cause__ or exc
    return isinstance(cause, (psycopg.OperationalError, PoolTimeout))


class PgAdmissions:
    """The admission writer of one node; `admit` returns once its group is committed."""

    def __init__(self, pools: PgPools, *, node: str) -> None:
        self._pools = pools
        self._node = node
        self._queue: asyncio.Queue[_Admission] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._run(), name=f"pg-admissions-{n}") for n in range(WRITERS)]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            self._queue.get_nowait().future.cancel()

    async def admit(self, device: DeviceLike, requests: list[Request], now: float) -> list[Any]:
        if not self._tasks:
            raise RuntimeError("the store is not open")
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Admission(device, requests, now, future))
        return await future

    async def _run(self) -> None:
        while True:
            group = [await self._queue.get()]
            while len(group) < _MAX_GROUP and not self._queue.empty():
                group.append(self._queue.get_nowait())
            try:
                await self._settle(group)
            except asyncio.CancelledError:
                for item in group:
                    item.future.cancel()
                raise

    async def _settle(self, group: list[_Admission]) -> None:
        """Commit `group` and answer its callers. When it fails for something other than the store being
        unreachable, each batch is tried again on its own, so that one device's batch with a value the
        store refuses fails its own caller only, not the other devices' batches committed with it."""
        try:
            acks = await self._commit(group)
        except Exception as exc:
            if len(group) > 1 and not _unreachable(exc):
                for item in group:
                    await self._settle([item])
                return
            if isinstance(exc, BridgeError):
                logger.warning("admission of %d batches failed: %s", len(group), exc)
            else:
                logger.exception("admission of %d batches failed", len(group))
            for item in group:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        for item, result in zip(group, acks, strict=True):
            if not item.future.done():
                item.future.set_result(result)

    async def _commit(self, group: list[_Admission]) -> list[list[Any]]:
        pairs = {(a.device.device_id, r.envelope.id) for a in group for r in a.requests}
        limit_keys = {(a.device.device_id, kind) for a in group for kind in limited_kinds(a.requests)}
        # A tenant with limits of its own is locked like a device (its key cannot be a device id), in the
        # same ordered statement: admissions of its devices on two nodes take turns on its state.
        tenant_keys = {(tenant_subject(a.device.tenant), k) for a in group for k in tenant_limited_kinds(a.requests)}
        limit_keys |= tenant_keys
        with converted("ledger admit"):
            async with self._pools.connection() as conn, conn.transaction():
                locks = {a.device.device_id for a in group} | {subject for subject, _ in tenant_keys}
                await conn.execute(_LOCK, (sorted(locks),))
                cursor = await conn.execute(_REVOKED, (sorted({a.device.device_id for a in group}),))
                revoked = {row["device_id"] for row in await cursor.fetchall()}
                known: dict[str, dict[str, Known]] = {}
                cursor = await conn.execute(_KNOWN, ([d for d, _ in pairs], [i for _, i in pairs]))
                for row in await cursor.fetchall():
                    known.setdefault(row["device_id"], {})[row["intent_id"]] = known_row(row)
                limits: dict[str, dict[str, LimitState]] = {}
                if limit_keys:
                    cursor = await conn.execute(_LIMITS, ([d for d, _ in limit_keys], [k for _, k in limit_keys]))
                    stored = {(r["device_id"], r["kind"]): r for r in await cursor.fetchall()}
                    for device_id, kind in limit_keys:
                        state = LimitState.from_columns(stored.get((device_id, kind)))
                        limits.setdefault(device_id, {})[kind] = state
                plans: list[Plan | None] = []
                changed: set[tuple[str, str]] = set()
                for item in group:
                    device_id = item.device.device_id
                    if device_id in revoked:
                        logger.warning("batch of a revoked device not admitted",
                                       extra={"device_id": device_id, "code": "device_revoked"})  # fmt: skip
                        plans.append(None)
                        continue
                    rows, states = known.setdefault(device_id, {}), limits.setdefault(device_id, {})
                    tenant = tenant_subject(item.device.tenant)
                    whole = limits.setdefault(tenant, {})
                    plan = plan_admission(item.device, item.requests, rows, states, item.now, whole)
                    # Later batches of this device in the group see what this one wrote.
                    for w in plan.writes:
                        rows[w.envelope.id] = Known(
                            w.envelope.id, w.envelope.app, w.state, w.envelope.attempt, w.code, w.detail,
                            item.now, w.digest,
                        )  # fmt: skip
                    states.update(plan.limits)
                    whole.update(plan.tenant_limits)
                    changed |= {(device_id, kind) for kind in plan.limits}
                    changed |= {(tenant, kind) for kind in plan.tenant_limits}
                    plans.append(plan)
                await self._write(conn, group, plans, [(d, k, limits[d][k]) for d, k in sorted(changed)])
        self._pools.commits += 1
        return [[] if plan is None else plan.acks for plan in plans]

    async def _write(
        self,
        conn: AsyncConn,
        group: list[_Admission],
        plans: list[Plan | None],
        changed: list[tuple[str, str, LimitState]],
    ) -> None:
        # Rows travel as one JSON document per statement: json.dumps is C, psycopg's list dumper is not
        # (arrays of 10,000 rows cost more CPU than everything else in admission).
        admitted = [(item, plan) for item, plan in zip(group, plans, strict=True) if plan is not None]
        writes = [(item, w) for item, plan in admitted for w in plan.writes]
        if writes:
            rows = [
                {"d": i.device.device_id, "i": w.envelope.id, "t": i.device.tenant, "a": w.envelope.app,
                 "k": w.envelope.kind, "p": b64encode(pack(w.envelope.payload)).decode(), "n": w.envelope.attempt,
                 "r": w.envelope.priority, "c": w.envelope.created, "x": w.envelope.expires, "s": str(w.state),
                 "o": w.code, "e": w.detail, "v": b64encode(pack(dict(w.overrides))).decode(), "g": w.digest,
                 "w": i.now}
                for i, w in writes
            ]  # fmt: skip
            await conn.execute(_UPSERT, (json.dumps(rows),))
        audits = [
            {"w": i.now, "d": i.device.device_id, "t": i.device.tenant, "i": a.intent_id, "k": a.kind,
             "v": str(a.event), "o": a.code, "e": a.detail}
            for i, plan in admitted
            for a in plan.audits
        ]  # fmt: skip
        if audits:
            await conn.execute(_AUDIT, (json.dumps(audits),))
        # Refusals count in usage. Writer "admit": a (device, ...) row is only written under that device's
        # advisory lock, taken above, so no admission waits for another's row lock here.
        tallies = merged(
            tally(i.device.tenant, i.device.device_id, a.kind, a.event, i.now)
            for i, plan in admitted
            for a in plan.audits
        )
        if tallies:
            async with conn.cursor() as cursor:
                await cursor.executemany(_USAGE_UPSERT, upsert_rows(tallies, "admit"))
        if changed:
            columns = [state.columns() for _, _, state in changed]
            await conn.execute(
                _LIMITS_UPSERT,
                ([d for d, _, _ in changed], [k for _, k, _ in changed], *([c[n] for c in columns] for n in range(4))),
            )
        if any(w.state is EntryState.QUEUED for _, w in writes):
            await conn.execute("SELECT pg_notify(%s, %s)", (WORK_CHANNEL, self._node))
