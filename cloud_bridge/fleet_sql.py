"""FleetStore in SQL, one text for SQLite and PostgreSQL (the tables are `fleet_schema`).

Every statement here is portable (upserts with ON CONFLICT, CASE, LIMIT/OFFSET); placeholders are
written `?` and turned into `%s` for psycopg. Each backend hands in a `transaction()` that yields a
connection inside a committed-at-the-end transaction and converts its driver's errors into ours.
Rows are written sorted by key, so that two nodes flushing at once lock them in the same order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

from cloud_bridge.fleet import (
    ADDRESS_AGE_S,
    HISTORY_AGE_S,
    HISTORY_PER_DEVICE,
    HOUR_S,
    REQUEST_AGE_S,
    TELEMETRY_AGE_S,
    DeviceState,
    DiagnoseRequest,
    Flush,
    HistoryEntry,
    RequestState,
    Telemetry,
    hour_of,
)
from cloud_bridge.fleet_rules import BASELINE_HOURS, VOLUME_FLOOR
from cloud_bridge.fleet_schema import SQLITE_NOW, migrate_fleet_file
from cloud_bridge.sqlite_calls import Transaction, sqlite_transaction
from intent_contract.device_wire import Diagnosis, diagnosis_from_wire, health_from_wire
from intent_contract.errors import DecodeError

T = TypeVar("T")


_CONNECTED = (
    "INSERT INTO fleet_devices (device_id, connected_at, seen_at, address) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (device_id) DO UPDATE SET connected_at = excluded.connected_at, seen_at = excluded.seen_at,"
    " address = excluded.address"
)
_HELD = (
    "INSERT INTO fleet_devices (device_id, node, seen_at) VALUES (?, ?, ?)"
    " ON CONFLICT (device_id) DO UPDATE SET node = excluded.node, seen_at = excluded.seen_at"
)
_REFUSED = (
    "INSERT INTO fleet_devices (device_id, refused_code, refused_at) VALUES (?, ?, ?)"
    " ON CONFLICT (device_id) DO UPDATE SET refused_code = excluded.refused_code, refused_at = excluded.refused_at"
)
_REPORT = (
    "INSERT INTO fleet_devices (device_id, seen_at, report, report_at, offset_ms) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (device_id) DO UPDATE SET seen_at = excluded.seen_at, report = excluded.report,"
    " report_at = excluded.report_at, offset_ms = excluded.offset_ms"
)
_TELEMETRY = (
    "INSERT INTO fleet_telemetry (device_id, hour, auth_failures, connects, intents) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (device_id, hour) DO UPDATE SET auth_failures = fleet_telemetry.auth_failures"
    " + excluded.auth_failures, connects = fleet_telemetry.connects + excluded.connects,"
    " intents = fleet_telemetry.intents + excluded.intents"
)
_ADDRESS = (
    "INSERT INTO fleet_addresses (device_id, address, first_seen, last_seen, connects, refused)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, address) DO UPDATE SET last_seen = excluded.last_seen,"
    " connects = fleet_addresses.connects + excluded.connects, refused = fleet_addresses.refused + excluded.refused"
)
_HISTORY_TRIM = (
    "DELETE FROM fleet_history WHERE device_id = ? AND seq <= (SELECT seq FROM fleet_history WHERE device_id = ?"
    " ORDER BY seq DESC LIMIT 1 OFFSET ?)"
)


def _stored(read: Callable[[object], T], text: str | None) -> T | None:
    """A stored report or diagnosis; None for one this version no longer reads (a bridge before a field's
    bound was tightened stored it): one device's old row must not fail a view of the whole fleet."""
    if text is None:
        return None
    try:
        return read(json.loads(text))
    except DecodeError:
        return None


def _state(row: Any) -> DeviceState:
    return DeviceState(
        device_id=row["device_id"],
        node=row["node"],
        connected_at=row["connected_at"],
        seen_at=row["seen_at"],
        address=row["address"],
        report=_stored(health_from_wire, row["report"]),
        report_at=row["report_at"],
        offset_ms=row["offset_ms"],
        refused_code=row["refused_code"],
        refused_at=row["refused_at"],
    )


def _request(row: Any) -> DiagnoseRequest:
    answer = row["answer"]
    return DiagnoseRequest(
        request_id=row["request_id"],
        device_id=row["device_id"],
        asked_at=row["asked_at"],
        state=RequestState(row["state"]),
        node=row["node"],
        detail=row["detail"],
        answered_at=row["answered_at"],
        diagnosis=_stored(diagnosis_from_wire, answer),
    )


def _rows_telemetry(flush: Flush) -> list[tuple[str, int, int, int, int]]:
    """(device, hour, refused, connects, intents), one row per key."""
    counts: dict[tuple[str, int], list[int]] = {}
    for s in flush.sightings:
        bucket = counts.setdefault((s.device_id, hour_of(s.at)), [0, 0, 0])
        bucket[0 if s.refused else 1] += 1
    for key, intents in (flush.volume or {}).items():
        counts.setdefault(key, [0, 0, 0])[2] += intents
    return [(d, h, refused, ok, intents) for (d, h), (refused, ok, intents) in sorted(counts.items())]


def _rows_addresses(flush: Flush) -> list[tuple[str, str, float, float, int, int]]:
    seen: dict[tuple[str, str], list[float]] = {}
    for s in flush.sightings:
        entry = seen.setdefault((s.device_id, s.address), [s.at, s.at, 0, 0])
        entry[0], entry[1] = min(entry[0], s.at), max(entry[1], s.at)
        entry[3 if s.refused else 2] += 1
    return [(d, a, first, last, int(ok), int(bad)) for (d, a), (first, last, ok, bad) in sorted(seen.items())]


class SqlFleet:
    """The FleetStore protocol on a SQL connection of either backend (`now_sql`: the store's clock in SQL;
    `clock`: this process's)."""

    def __init__(
        self,
        transaction: Transaction,
        *,
        marker: str = "?",
        on_open: Callable[[], object] = lambda: None,
        now_sql: str = SQLITE_NOW,
        clock: Callable[[], float] = time.time,
    ):
        self._transaction = transaction
        self._marker = marker
        self._on_open = on_open
        self._now_sql = now_sql
        self._clock = clock

    def _sql(self, text: str) -> str:
        return text if self._marker == "?" else text.replace("?", self._marker)

    def _run(self, conn: Any, text: str, params: Sequence[Any] = ()) -> Any:
        return conn.execute(self._sql(text), params)

    def _many(self, conn: Any, text: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            conn.cursor().executemany(self._sql(text), rows)

    def open(self) -> None:
        self._on_open()

    def close(self) -> None:
        return None

    def flush(self, flush: Flush) -> None:
        sightings = sorted(flush.sightings, key=lambda s: (s.device_id, s.at))
        with self._transaction() as conn:
            # In the store's time, not the node's: see `nodes`.
            self._run(
                conn,
                f"INSERT INTO fleet_nodes (node, heartbeat_at) VALUES (?, {self._now_sql})"
                " ON CONFLICT (node) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                (flush.node,),
            )
            # The last word per device: its latest connect, then its latest refusal (addresses keep the rest).
            connected = {s.device_id: s for s in sightings if not s.refused}
            refused = {s.device_id: s for s in sightings if s.refused}
            self._many(conn, _CONNECTED, [(d, s.at, s.at, s.address) for d, s in sorted(connected.items())])
            self._many(conn, _REFUSED, [(d, s.refused, s.at) for d, s in sorted(refused.items())])
            # Sessions: which node holds them is known from the node's own list (fleet_desk), not from
            # connects alone; a session that moved to another node is that node's to write.
            self._many(conn, _HELD, [(d, flush.node, flush.now) for d in sorted(flush.held)])
            reports = sorted(flush.reports, key=lambda r: (r.device_id, r.at))
            latest = {r.device_id: r for r in reports}
            self._many(
                conn,
                _REPORT,
                [(d, r.at, json.dumps(r.report.to_wire()), r.at, r.offset_ms) for d, r in sorted(latest.items())],
            )
            kept = [r for r in reports if r.history]
            self._many(
                conn,
                "INSERT INTO fleet_history (device_id, at, offset_ms, report) VALUES (?, ?, ?, ?)",
                [(r.device_id, r.at, r.offset_ms, json.dumps(r.report.to_wire())) for r in kept],
            )
            trimmed = sorted({r.device_id for r in kept})
            self._many(conn, _HISTORY_TRIM, [(d, d, HISTORY_PER_DEVICE) for d in trimmed])
            self._many(
                conn,
                "UPDATE fleet_devices SET node = '', seen_at = ? WHERE device_id = ? AND node = ?",
                [(flush.now, d, flush.node) for d in sorted(flush.released)],
            )
            self._many(conn, _TELEMETRY, _rows_telemetry(flush))
            self._many(conn, _ADDRESS, _rows_addresses(flush))

    def leave(self, node: str, now: float) -> None:
        with self._transaction() as conn:
            self._run(conn, "UPDATE fleet_devices SET node = '', seen_at = ? WHERE node = ?", (now, node))
            self._run(conn, "DELETE FROM fleet_nodes WHERE node = ?", (node,))

    def states(self, device_ids: Collection[str] | None = None) -> dict[str, DeviceState]:
        with self._transaction() as conn:
            if device_ids is None:
                rows = self._run(conn, "SELECT * FROM fleet_devices").fetchall()
            else:
                rows = [
                    row
                    for d in sorted(set(device_ids))
                    if (row := self._run(conn, "SELECT * FROM fleet_devices WHERE device_id = ?", (d,)).fetchone())
                ]
        return {row["device_id"]: _state(row) for row in rows}

    def now(self) -> float:
        with self._transaction() as conn:
            return float(self._run(conn, f"SELECT {self._now_sql} AS store_now").fetchone()["store_now"])

    def nodes(self) -> dict[str, float]:
        """Each node's last heartbeat, in the store's time: heartbeats are written and read by the store's clock,
        so that neither a node's clock nor the reader's (`devices ls` runs on any machine; each node serves the
        dashboard) has to agree with the others'. A node 30 s behind wrote heartbeats that every correct reader
        took as 30 s old (its devices shown gone), and a reader 30 s ahead took every node as stopped."""
        with self._transaction() as conn:
            rows = self._run(conn, "SELECT node, heartbeat_at FROM fleet_nodes").fetchall()
        return {row["node"]: row["heartbeat_at"] for row in rows}

    def history(self, device_id: str, limit: int) -> list[HistoryEntry]:
        with self._transaction() as conn:
            rows = self._run(
                conn,
                "SELECT at, offset_ms, report FROM fleet_history WHERE device_id = ? ORDER BY seq DESC LIMIT ?",
                (device_id, limit),
            ).fetchall()
        found = ((r, _stored(health_from_wire, r["report"])) for r in rows)
        return [HistoryEntry(r["at"], r["offset_ms"], report) for r, report in found if report is not None]

    def telemetry(self, now: float, device_ids: Collection[str] | None = None) -> dict[str, Telemetry]:
        hour = hour_of(now)
        wanted = None if device_ids is None else set(device_ids)
        found: dict[str, dict[str, Any]] = {}
        with self._transaction() as conn:
            for row in self._run(
                conn,
                "SELECT device_id, SUM(auth_failures) AS failures, SUM(connects) AS connects FROM fleet_telemetry"
                " WHERE hour >= ? GROUP BY device_id",
                (hour - 1,),
            ).fetchall():
                found.setdefault(row["device_id"], {}).update(
                    auth_failures=int(row["failures"]), connects=int(row["connects"])
                )
            for row in self._run(
                conn,
                "SELECT device_id, address FROM fleet_addresses WHERE last_seen >= ? ORDER BY device_id, address",
                (now - HOUR_S,),
            ).fetchall():
                entry = found.setdefault(row["device_id"], {})
                entry["addresses"] = (*entry.get("addresses", ()), row["address"])
            # A week of hours per device is summed only for the devices asked for, or (for the whole fleet)
            # for those busy enough in the last two hours to be flagged at all (fleet_rules.VOLUME_FLOOR).
            busy = (
                ("device_id = ?", [(d,) for d in sorted(wanted)])
                if wanted is not None
                else ("device_id IN (SELECT device_id FROM fleet_telemetry WHERE hour >= ? AND intents >= ?)",
                      [(hour - 1, VOLUME_FLOOR)])
            )  # fmt: skip
            rows = [
                row
                for params in busy[1]
                for row in self._run(
                    conn,
                    "SELECT device_id, MAX(CASE WHEN hour >= ? THEN intents ELSE 0 END) AS recent,"
                    " SUM(CASE WHEN hour < ? THEN intents ELSE 0 END) AS baseline FROM fleet_telemetry"
                    f" WHERE hour >= ? AND {busy[0]} GROUP BY device_id HAVING SUM(intents) > 0",
                    (hour - 1, hour - 1, hour - 1 - BASELINE_HOURS, *params),
                ).fetchall()
            ]
            for row in rows:
                found.setdefault(row["device_id"], {}).update(
                    recent_volume=int(row["recent"]), baseline_volume=int(row["baseline"])
                )
        return {d: Telemetry(**fields) for d, fields in found.items() if wanted is None or d in wanted}

    def ask(self, request_id: str, device_id: str, now: float) -> None:
        """A request asked at `now` on this process's clock, kept in the store's time (see `pending`)."""
        with self._transaction() as conn:
            self._run(
                conn,
                "INSERT INTO fleet_requests (request_id, device_id, asked_at, state)"
                f" VALUES (?, ?, {self._now_sql} - ?, ?)",
                (request_id, device_id, self._clock() - now, str(RequestState.PENDING)),
            )

    def pending(self, since: float) -> list[DiagnoseRequest]:
        """Requests asked from `since` on (this process's clock), judged in the store's time: `devices diagnose`
        runs on any machine, and one whose clock was a minute behind the nodes' asked requests that every node
        took as too old to send (the operator waited `--timeout` for nothing)."""
        with self._transaction() as conn:
            rows = self._run(
                conn,
                f"SELECT * FROM fleet_requests WHERE state = 'pending' AND asked_at >= {self._now_sql} - ?"
                " ORDER BY asked_at",
                (self._clock() - since,),
            ).fetchall()
        return [_request(r) for r in rows]

    def mark(self, request_id: str, state: RequestState, node: str, detail: str, now: float) -> bool:
        with self._transaction() as conn:
            changed = self._run(
                conn,
                "UPDATE fleet_requests SET state = ?, node = ?, detail = ? WHERE request_id = ?"
                " AND (state = 'pending' OR (state = 'sent' AND node = ?))",
                (str(state), node, detail, request_id, node),
            ).rowcount
        return bool(changed)

    def answer(self, request_id: str, device_id: str, diagnosis: Diagnosis, now: float) -> bool:
        with self._transaction() as conn:
            changed = self._run(
                conn,
                "UPDATE fleet_requests SET state = 'answered', answered_at = ?, answer = ?"
                " WHERE request_id = ? AND device_id = ? AND state = 'sent'",
                (now, json.dumps(diagnosis.to_wire()), request_id, device_id),
            ).rowcount
        return bool(changed)

    def request(self, request_id: str) -> DiagnoseRequest | None:
        with self._transaction() as conn:
            row = self._run(conn, "SELECT * FROM fleet_requests WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else _request(row)

    def prune(self, now: float) -> int:
        deleted = 0
        with self._transaction() as conn:
            for text, bound in (
                ("DELETE FROM fleet_history WHERE at < ?", now - HISTORY_AGE_S),
                ("DELETE FROM fleet_telemetry WHERE hour < ?", hour_of(now - TELEMETRY_AGE_S)),
                ("DELETE FROM fleet_addresses WHERE last_seen < ?", now - ADDRESS_AGE_S),
                ("DELETE FROM fleet_requests WHERE asked_at < ?", now - REQUEST_AGE_S),
            ):
                deleted += self._run(conn, text, (bound,)).rowcount
        return deleted


def sqlite_fleet(path: Path) -> SqlFleet:
    """The fleet tables in a SQLite file of their own (`FLEET_DB`, beside the ledger; see `sqlite_transaction`).

    Not in ledger.db: the desk writes while devices send (a flush a second, a heartbeat every 5 s), and a second
    writer on the ledger's file made the ledger's group-commit writer wait in SQLite's busy handler, whose sleeps
    grow to 100 ms: 300-400 ms stalls of admission and results, P5's p99 291 ms against 72 ms without them.
    Commits are not fsync'd (WAL, synchronous NORMAL): this is telemetry, rewritten every second while devices
    are connected; a power cut may lose its last seconds, and a second fsync stream per second beside the
    ledger's lengthened the ledger's commits.
    """
    transaction = sqlite_transaction(path, "fleet tables", synchronous="NORMAL")
    return SqlFleet(transaction, on_open=lambda: migrate_fleet_file(path))
