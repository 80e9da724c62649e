"""The executor's rows on PostgreSQL: claiming due and lapsed rows, and finishing them.

Functions of one connection that `PgLedger` runs in its group commit. Claims take rows with
`SELECT ... FOR UPDATE SKIP LOCKED` under a lease (owner, lease_until), so executors on several nodes
never wait for each other and never take the same row; a row whose lease ran out is taken over. A final
result notifies `RESULTS_CHANNEL` with the device id (the node holding the device's session sends it).
Every UPDATE of a state sets an event's target and matches only its source states (`ledger_states`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from cloud_bridge.audit import AuditEvent
from cloud_bridge.ledger import LedgerEntry, audit_params, entry_from_row, lapsed_detail, log_context
from cloud_bridge.ledger_finish import Finish
from cloud_bridge.ledger_states import AUDIT, FINISH, LedgerEvent, sources, state_in, target
from cloud_bridge.store.pg_pools import AsyncConn
from cloud_bridge.usage import merged, tally
from cloud_bridge.usage_sql import UPSERT as USAGE_UPSERT
from cloud_bridge.usage_sql import sql, upsert_rows
from intent_contract.codec import Ack

logger = logging.getLogger(__name__)

RESULTS_CHANNEL = "bridge_results"
AUDIT_INSERT = (
    "INSERT INTO audit (at, device_id, tenant, intent_id, kind, event, integration, code, detail)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
USAGE_UPSERT_PG = sql(USAGE_UPSERT, "%s")
# Whether the row's device is revoked. Read in the claim, so that a node whose revocation watcher has not
# polled yet (up to 0.5 s) does not run the rows of a device revoked through another node; and in a finish,
# whose result is then confirmed: no edge will ever confirm it (its call was under way at the revocation),
# and an unconfirmed result is never deleted (`devices revoke` confirms those already final).
_REVOKED_DEVICE = "EXISTS (SELECT 1 FROM devices d WHERE d.device_id = i.device_id AND d.revoked_at IS NOT NULL)"
_REVOKED = f"{_REVOKED_DEVICE} AS revoked"
_CLAIMED = (
    f"state = '{target(LedgerEvent.CLAIM)}', tries = i.tries + 1, owner = %(owner)s,"
    " lease_until = %(until)s, updated = %(now)s"
)


# Leases are kept in the database's time: each node adds to its own time how far the database's is from it,
# measured every OFFSET_EVERY seconds. A node whose clock was ahead of the others' by more than what was left
# of their leases (2/3 of a lease at least: 20 s by default) took their running rows as lapsed and ran them
# again. Offsets under CLOCK_TOLERANCE (NTP keeps nodes within milliseconds) count as none.
OFFSET_EVERY = 60.0
CLOCK_TOLERANCE = 1.0


class LeaseClock:
    """How far the database's clock is ahead of this node's (seconds; 0 within CLOCK_TOLERANCE)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.offset = 0.0
        self._measured: float | None = None  # time.monotonic() of the last measure

    async def offset_in(self, conn: AsyncConn) -> float:
        """The offset, measured again on `conn` when the last measure is OFFSET_EVERY old."""
        at = time.monotonic()
        if self._measured is not None and at - self._measured < OFFSET_EVERY:
            return self.offset
        cursor = await conn.execute("SELECT extract(epoch from clock_timestamp())::float8 AS t")
        row = await cursor.fetchone()
        assert row is not None
        measured = row["t"] - self._clock()
        offset = 0.0 if abs(measured) < CLOCK_TOLERANCE else measured
        if offset != self.offset:
            logger.warning(
                "this node's clock is %.1f s %s the database's: leases are kept in the database's time"
                " (keep every node's clock on NTP)", abs(measured), "behind" if measured > 0 else "ahead of",
                extra={"code": "clock_offset", "offset": measured},
            )  # fmt: skip
        self.offset, self._measured = offset, at
        return offset


async def claim_rows(
    conn: AsyncConn,
    kind_list: list[str],
    limit: int,
    now: float,
    *,
    owner: str,
    until: float,
    tenant: str | None,
    due_by: float,
    lapsed_by: float | None = None,
) -> list[LedgerEntry]:
    """Rows of `kind_list` (of `tenant`) whose lease ran out by `lapsed_by` (default `due_by`; in the leases'
    time, `LeaseClock`) first, then queued rows due by `due_by`, at most `limit`, moved to running for `owner`
    until `until`; rows locked by other claims are skipped."""
    of_tenant = "" if tenant is None else " AND tenant = %(tenant)s"
    params = {"kinds": kind_list, "now": now, "owner": owner, "until": until, "limit": limit, "tenant": tenant,
              "due": due_by, "lapsed": due_by if lapsed_by is None else lapsed_by}  # fmt: skip
    cursor = await conn.execute(
        "WITH c AS (SELECT seq, owner AS was FROM intents"
        f" WHERE {state_in(sources(LedgerEvent.RECLAIM))} AND lease_until < %(lapsed)s"
        f" AND kind = ANY(%(kinds)s){of_tenant} ORDER BY seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
        f" UPDATE intents i SET {_CLAIMED} FROM c WHERE i.seq = c.seq RETURNING i.*, c.was, {_REVOKED}",
        params,
    )
    lapsed = await cursor.fetchall()
    due: list[dict[str, Any]] = []
    if len(lapsed) < limit:
        kind_match = "kind = %(kind)s" if len(kind_list) == 1 else "kind = ANY(%(kinds)s)"
        cursor = await conn.execute(
            "WITH c AS (SELECT seq FROM intents"
            f" WHERE {state_in(sources(LedgerEvent.CLAIM))} AND {kind_match}{of_tenant}"
            " AND next_run <= %(due)s ORDER BY priority DESC, seq LIMIT %(rest)s FOR UPDATE SKIP LOCKED)"
            f" UPDATE intents i SET {_CLAIMED} FROM c WHERE i.seq = c.seq RETURNING i.*, {_REVOKED}",
            {**params, "kind": kind_list[0], "rest": limit - len(lapsed)},
        )
        due = sorted(await cursor.fetchall(), key=lambda r: (-r["priority"], r["seq"]))
    if lapsed:
        async with conn.cursor() as audit:
            await audit.executemany(
                AUDIT_INSERT,
                [
                    audit_params(
                        now,
                        entry_from_row(row),
                        AuditEvent.RETRY,
                        "",
                        "lease_expired",
                        lapsed_detail(row["was"]),
                    )
                    for row in lapsed
                ],
            )
    entries = [entry_from_row(row) for row in [*lapsed, *due]]
    return [replace(e, revoked=True) if row["revoked"] else e for e, row in zip(entries, [*lapsed, *due], strict=True)]


async def finish_rows(conn: AsyncConn, finishes: list[Finish], node: str) -> list[Ack]:
    """Record each finish's state on the row its entry holds, one UPDATE per finishing event (each row
    matched to its holder); a row no longer held is left alone (logged). Then the audit rows and the
    usage counts in bulk, and a signal to the node of each device (`cloud_bridge.ledger_finish`)."""
    held: set[int] = set()  # positions in `finishes`
    by_event: dict[LedgerEvent, list[int]] = {}
    for n, f in enumerate(finishes):
        by_event.setdefault(FINISH[f.state], []).append(n)
    for event, positions in by_event.items():
        group = [finishes[n] for n in positions]
        cursor = await conn.execute(
            f"UPDATE intents AS i SET state = '{target(event)}', code = h.code, detail = h.detail,"
            f" updated = h.now, owner = '', confirmed = i.confirmed OR {_REVOKED_DEVICE}"
            " FROM unnest(%s::int[], %s::text[], %s::text[], %s::int[], %s::int[], %s::text[], %s::text[],"
            " %s::float8[])"
            " AS h(n, device_id, intent_id, attempt, tries, code, detail, now)"
            " WHERE i.device_id = h.device_id AND i.intent_id = h.intent_id AND i.attempt = h.attempt"
            f" AND i.tries = h.tries AND {state_in(sources(event), 'i.state')} RETURNING h.n",
            (
                positions,
                [f.entry.device_id for f in group],
                [f.entry.intent_id for f in group],
                [f.entry.attempt for f in group],
                [f.entry.tries for f in group],
                [f.code for f in group],
                [f.detail for f in group],
                [f.now for f in group],
            ),
        )
        held.update(row["n"] for row in await cursor.fetchall())
    acks: list[Ack] = []
    audits, tallies = [], []
    for n, f in enumerate(finishes):
        entry = f.entry
        if n not in held:
            logger.warning("finish of %s/%s ignored: no longer held", entry.device_id, entry.intent_id,
                           extra=log_context(entry, code="not_held"))  # fmt: skip
            cursor = await conn.execute(
                "SELECT * FROM intents WHERE device_id = %s AND intent_id = %s", (entry.device_id, entry.intent_id)
            )
            row = await cursor.fetchone()
            acks.append(entry_from_row(row).ack() if row is not None else entry.ack())
            continue
        audit = AUDIT[FINISH[f.state]]
        assert audit is not None
        audits.append(audit_params(f.now, entry, audit, f.integration, f.code, f.detail))
        tallies.append(tally(entry.tenant, entry.device_id, entry.kind, audit, f.now, f.seconds))
        acks.append(f.ack())
    if audits:
        async with conn.cursor() as cursor:
            await cursor.executemany(AUDIT_INSERT, audits)
            await cursor.executemany(USAGE_UPSERT_PG, upsert_rows(merged(tallies), node))
        signals = sorted({f"{finishes[n].entry.device_id} {node}" for n in held})
        await conn.execute("SELECT pg_notify(%s, signal) FROM unnest(%s::text[]) AS signal", (RESULTS_CHANNEL, signals))
    return acks


async def unclaim_rows(conn: AsyncConn, entries: Sequence[LedgerEntry]) -> int:
    """Put `entries` (claimed, never started) back in the queue as they were before their claim."""
    cursor = await conn.execute(
        f"UPDATE intents AS i SET state = '{target(LedgerEvent.RESUME)}', tries = i.tries - 1, owner = '',"
        " lease_until = 0 FROM unnest(%s::text[], %s::text[], %s::int[], %s::int[]) AS h(device_id, intent_id,"
        " attempt, tries) WHERE i.device_id = h.device_id AND i.intent_id = h.intent_id AND i.attempt = h.attempt"
        f" AND i.tries = h.tries AND {state_in(sources(LedgerEvent.RESUME), 'i.state')}",
        (
            [e.device_id for e in entries],
            [e.intent_id for e in entries],
            [e.attempt for e in entries],
            [e.tries for e in entries],
        ),
    )
    return cursor.rowcount
