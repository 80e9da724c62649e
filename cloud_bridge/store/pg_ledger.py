"""PgLedger: the Ledger protocol on PostgreSQL, shared by every bridge node.

- Admission (`pg_admit`): the batches waiting on a node are admitted in one transaction holding their
  devices' advisory locks, so two nodes never both admit one (device, intent id); planned by the
  shared `ledger_plan.plan_admission`.
- Claims and finishes (`pg_jobs`): `SELECT ... FOR UPDATE SKIP LOCKED` under a lease (owner,
  lease_until); executors on several nodes never wait for each other and never take the same row; a row
  whose lease ran out is taken over.
- Signals: a final result notifies `bridge_results` with the device id (the node holding the device's
  session sends it); an admission notifies `bridge_work` (the executors of other nodes wake up).
State moves come from `ledger_states`: each UPDATE sets an event's target and matches its sources.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

from cloud_bridge.audit import AuditEvent, AuditQuery, AuditRecord
from cloud_bridge.ledger import (
    DEFAULT_LEASE,
    DEPTH_SQL,
    WAITING_SQL,
    ClaimOffer,
    DeviceLike,
    LedgerDepth,
    LedgerEntry,
    audit_params,
    clip_detail,
    depth_from_rows,
    entry_from_row,
    held_by,
    log_context,
)
from cloud_bridge.ledger_finish import Finish, JoinedFinishes, final_state
from cloud_bridge.ledger_plan import Known, Request
from cloud_bridge.ledger_states import (
    LIVE_STATES,
    EntryState,
    LedgerEvent,
    sources,
    sql_states,
    state_in,
    target,
)
from cloud_bridge.store.pg_admit import PgAdmissions
from cloud_bridge.store.pg_group import PgGroupCommit
from cloud_bridge.store.pg_jobs import AUDIT_INSERT, USAGE_UPSERT_PG, LeaseClock, claim_rows, finish_rows, unclaim_rows
from cloud_bridge.store.pg_pools import AsyncConn, PgPools
from cloud_bridge.usage import UsageQuery, UsageRow, merged, row_from_sums, tally
from cloud_bridge.usage_sql import select as usage_select
from cloud_bridge.usage_sql import upsert_rows
from intent_contract.codec import Ack
from intent_contract.wire import MAX_ATTEMPT

logger = logging.getLogger(__name__)

_LIVE = sql_states(LIVE_STATES)
_KNOWN = "intent_id, app, state, attempt, code, detail, updated, digest"

_HELD = "device_id = %s AND intent_id = %s AND attempt = %s AND tries = %s"


def _known(row: dict[str, Any]) -> Known:
    return Known(**{**row, "state": EntryState(row["state"])})


class PgLedger:
    """The Ledger protocol on PostgreSQL; `node` names this process in leases and signals."""

    def __init__(self, pools: PgPools, *, node: str, clock: Callable[[], float] = time.time) -> None:
        self._pools = pools
        self._node = node
        self._lease_clock = LeaseClock(clock)  # leases in the database's time, whatever this node's clock says
        self._group = PgGroupCommit(pools)
        self._admissions = PgAdmissions(pools, node=node)
        self._finishes = JoinedFinishes(
            lambda take: self._group.call(lambda conn: finish_rows(conn, take(), self._node), "ledger finish")
        )

    def __repr__(self) -> str:
        return f"PgLedger(node={self._node!r})"

    @property
    def commits(self) -> int:
        """Write transactions of this process so far."""
        return self._pools.commits

    async def open(self) -> None:
        await self._pools.open_async()
        self._group.start()
        self._admissions.start()

    async def close(self) -> None:
        await self._admissions.stop()
        await self._group.stop()
        await self._pools.close_async()

    # -- admission --------------------------------------------------------------------------------

    async def admit(self, device: DeviceLike, requests: Sequence[Request], now: float) -> list[Ack]:
        """Record a judged batch, in one transaction with the other batches waiting (see `pg_admit`)."""
        acks: list[Ack] = await self._admissions.admit(device, list(requests), now)
        return acks

    @property
    def claims_at_admission(self) -> bool:
        return False

    async def admit_claiming(
        self, device: DeviceLike, requests: Sequence[Request], now: float, offer: ClaimOffer
    ) -> tuple[list[Ack], list[LedgerEntry]]:
        """`admit`; claims none: an admission group holds many devices' batches, and its rows are claimed by
        the executors of every node (`claim`), woken by `bridge_work`."""
        return await self.admit(device, requests, now), []

    async def unconfirmed(self, device_id: str) -> list[Ack]:
        """Final results the edge has not confirmed yet, then live rows an operator retried (`accepted`)."""
        async with self._pools.transaction("ledger read", writes=False) as conn:
            cursor = await conn.execute(
                f"(SELECT {_KNOWN} FROM intents WHERE device_id = %s AND NOT confirmed AND state NOT IN {_LIVE}"
                f" ORDER BY seq) UNION ALL SELECT {_KNOWN} FROM intents WHERE device_id = %s AND announce"
                f" AND state IN {_LIVE}",
                (device_id, device_id),
            )
            return [_known(row).ack() for row in await cursor.fetchall()]

    async def confirm(self, device_id: str, ids: Sequence[str], attempt: int | None = None) -> int:
        """Mark final results as applied by the edge; unknown, live or already confirmed ids are ignored, and
        with `attempt` rows of a later attempt."""
        unique = list(dict.fromkeys(ids))
        if not unique:
            return 0
        upto = MAX_ATTEMPT if attempt is None else attempt

        async def run(conn: AsyncConn) -> int:
            cursor = await conn.execute(
                "UPDATE intents SET confirmed = true, announce = false WHERE device_id = %s AND intent_id = ANY(%s)"
                f" AND NOT confirmed AND state NOT IN {_LIVE} AND attempt <= %s",
                (device_id, unique, upto),
            )
            return cursor.rowcount

        return await self._group.call(run, "ledger confirm")

    # -- execution --------------------------------------------------------------------------------

    async def recover(self, now: float) -> int:
        """Rows whose lease ran out go back to the queue (code `resumed`); live nodes keep theirs."""
        event = LedgerEvent.RESUME
        detail = "its executor stopped renewing the lease; running it again"
        async with self._pools.transaction("ledger recover") as conn:
            lapsed = now + await self._lease_clock.offset_in(conn)
            cursor = await conn.execute(
                f"UPDATE intents SET state = '{target(event)}', code = 'resumed', detail = %s, next_run = %s,"
                f" updated = %s, owner = '', lease_until = 0"
                f" WHERE {state_in(sources(event))} AND lease_until < %s RETURNING *",
                (detail, now, now, lapsed),
            )
            rows = [entry_from_row(row) for row in await cursor.fetchall()]
            if rows:
                async with conn.cursor() as audit:
                    await audit.executemany(
                        AUDIT_INSERT, [audit_params(now, e, AuditEvent.RETRY, "", "resumed", detail) for e in rows]
                    )
        if rows:
            logger.warning("recovered %d intents whose executor stopped renewing their lease", len(rows))
        return len(rows)

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
        """Rows whose lease ran out first, then due queued rows; rows locked by other claims are skipped."""
        kind_list = list(dict.fromkeys(kinds))
        if not kind_list or limit < 1:
            return []
        due = now if due_by is None else due_by

        async def run(conn: AsyncConn) -> list[LedgerEntry]:
            offset = await self._lease_clock.offset_in(conn)
            return await claim_rows(conn, kind_list, limit, now, owner=owner, until=now + offset + lease,
                                    tenant=tenant, due_by=due, lapsed_by=due + offset)  # fmt: skip

        return await self._group.call(run, "ledger claim")

    async def renew(self, entries: Sequence[LedgerEntry], until: float) -> int:
        """Extend the leases of the rows these claims still hold."""
        if not entries:
            return 0

        async def run(conn: AsyncConn) -> int:
            offset = await self._lease_clock.offset_in(conn)
            cursor = await conn.execute(
                "UPDATE intents AS i SET lease_until = %s FROM unnest(%s::text[], %s::text[], %s::int[], %s::int[])"
                " AS h(device_id, intent_id, attempt, tries) WHERE i.device_id = h.device_id"
                " AND i.intent_id = h.intent_id AND i.attempt = h.attempt AND i.tries = h.tries"
                f" AND i.state = '{EntryState.RUNNING}'",
                (
                    until + offset,
                    [e.device_id for e in entries],
                    [e.intent_id for e in entries],
                    [e.attempt for e in entries],
                    [e.tries for e in entries],
                ),
            )
            return cursor.rowcount

        return await self._group.call(run, "ledger renew")

    async def unclaim(self, entries: Sequence[LedgerEntry]) -> int:
        """Put rows claimed and never started back in the queue, as before their claim."""
        if not entries:
            return 0
        return await self._group.call(lambda conn: unclaim_rows(conn, entries), "ledger unclaim")

    async def waiting_tenants(self, kinds: Collection[str], now: float) -> list[str]:
        """Tenants with rows of `kinds` queued or running past their lease, sorted (a skip scan per kind)."""
        query = WAITING_SQL.format(p="%s")
        found: set[str] = set()
        async with self._pools.transaction("ledger read", writes=False) as conn:
            for kind in dict.fromkeys(kinds):
                cursor = await conn.execute(query, (kind, kind, now + self._lease_clock.offset, kind))
                found.update(row["tenant"] for row in await cursor.fetchall())
        return sorted(found)

    async def next_due(self, kinds: Collection[str]) -> float | None:
        """When the earliest queued row of `kinds` becomes due, or None when none is queued."""
        kind_list = list(dict.fromkeys(kinds))
        if not kind_list:
            return None
        async with self._pools.transaction("ledger read", writes=False) as conn:
            cursor = await conn.execute(
                f"SELECT min(next_run) AS due FROM intents WHERE {state_in(sources(LedgerEvent.CLAIM))}"
                " AND kind = ANY(%s)",
                (kind_list,),
            )
            row = await cursor.fetchone()
        due: float | None = None if row is None else row["due"]
        return due

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
        """Record the final state of the row `entry` holds, count it in usage, and signal the device's node.

        The usage row is this node's own (writer = node): the group commit never waits for another node's lock.
        """
        finish = Finish(entry, final_state(state), code, clip_detail(detail), now, integration, seconds)
        return await self._finishes.finish(finish)

    async def reschedule(
        self, entry: LedgerEntry, next_run: float, code: str, detail: str, now: float, *, counted: bool = True
    ) -> None:
        """Put the row `entry` holds back in the queue, due at `next_run` (`Ledger.reschedule`); audit the retry."""
        detail = clip_detail(detail)
        event = LedgerEvent.RETRY

        async def run(conn: AsyncConn) -> None:
            cursor = await conn.execute(
                f"UPDATE intents SET state = '{target(event)}', tries = tries - {int(not counted)}, code = %s,"
                f" detail = %s, next_run = %s, updated = %s, owner = '', lease_until = 0"
                f" WHERE {_HELD} AND {state_in(sources(event))}{'' if counted else ' AND next_run = %s'}",
                (code, detail, next_run, now, *held_by(entry), *(() if counted else (entry.next_run,))),
            )
            if cursor.rowcount == 0:
                logger.warning("reschedule of %s/%s ignored: no longer held", entry.device_id, entry.intent_id,
                               extra=log_context(entry, code="not_held"))  # fmt: skip
                return
            await conn.execute(AUDIT_INSERT, audit_params(now, entry, AuditEvent.RETRY, "", code, detail))

        await self._group.call(run, "ledger reschedule")

    # -- operations -------------------------------------------------------------------------------

    async def note(self, records: Sequence[AuditRecord]) -> None:
        """Append audit records of refusals no ledger row stands for (and count their intents in usage)."""
        rows = list(records)
        if not rows:
            return
        tallies = merged(tally(r.tenant, r.device_id, r.kind, r.event, r.at) for r in rows if r.intent_id and r.kind)

        async def run(conn: AsyncConn) -> None:
            async with conn.cursor() as cursor:
                await cursor.executemany(
                    AUDIT_INSERT,
                    [(r.at, r.device_id, r.tenant, r.intent_id, r.kind, str(r.event), r.integration, r.code,
                      r.detail) for r in rows],
                )  # fmt: skip
                if tallies:
                    await cursor.executemany(USAGE_UPSERT_PG, upsert_rows(tallies, self._node))

        await self._group.call(run, "audit note")

    async def usage(self, query: UsageQuery) -> list[UsageRow]:
        """Usage summed per the query's grouping (one read of the rollup table)."""
        text, params = usage_select(query, "%s")
        async with self._pools.transaction("usage read", writes=False) as conn:
            cursor = await conn.execute(text.encode(), params)
            return [row_from_sums(dict(row)) for row in await cursor.fetchall()]

    async def audit(
        self, device_id: str | None = None, since: float | None = None, limit: int = 1000, *, tenant: str | None = None
    ) -> list[AuditRecord]:
        """Audit records, oldest first, of one device (or tenant) or all, from `since` on, at most `limit`."""
        query = AuditQuery(device_id, since, limit, tenant)
        where, params = ["true"], list[str | float]()
        if query.device_id is not None:
            where.append("device_id = %s")
            params.append(query.device_id)
        if query.tenant is not None:
            where.append("tenant = %s")
            params.append(query.tenant)
        if query.since is not None:
            where.append("at >= %s")
            params.append(query.since)
        async with self._pools.transaction("audit read", writes=False) as conn:
            cursor = await conn.execute(
                "SELECT at, device_id, tenant, intent_id, kind, event, integration, code, detail FROM audit"
                f" WHERE {' AND '.join(where)} ORDER BY seq LIMIT %s",
                (*params, query.limit),
            )
            rows = await cursor.fetchall()
        return [AuditRecord(**{**row, "event": AuditEvent(row["event"])}) for row in rows]

    async def depth(self) -> LedgerDepth:
        """Rows not done with, per state and kind, and the oldest queued (one query)."""
        async with self._pools.transaction("ledger read", writes=False) as conn:
            cursor = await conn.execute(DEPTH_SQL.format(unconfirmed="NOT confirmed"))
            return depth_from_rows(await cursor.fetchall())

    async def ping(self) -> None:
        """One trivial query on a pooled connection."""
        async with self._pools.transaction("store ping", writes=False) as conn:
            await conn.execute("SELECT 1")
