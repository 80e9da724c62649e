"""The usage rollup in SQL, one text for SQLite and PostgreSQL (placeholders `?`, turned into `%s` for psycopg).

The ledger backends call `upsert_rows` inside the transaction that writes the audit rows being
counted, and `select` for reports; `cloud_bridge.usage` holds the meaning of every column.
"""

from __future__ import annotations

from typing import Any

from cloud_bridge.usage import BUCKETS, Tally, UsageQuery

_HIST = tuple(f"h{i}" for i in range(BUCKETS))
# Counter columns, in `Tally.columns()` order.
COUNTERS = ("delivered", "failed", "expired", "rejected", "timed", "time_sum_ms", "time_max_ms", *_HIST)
_MAX = "time_max_ms"


def schema(real: str, integer: str) -> tuple[str, ...]:
    """The schema step: the usage table, and an index for `cloud-bridge audit --tenant`."""
    counters = ", ".join(f"{c} {real if c in ('time_sum_ms', _MAX) else integer} NOT NULL DEFAULT 0" for c in COUNTERS)
    return (
        f"""CREATE TABLE usage (
    tenant TEXT NOT NULL, device_id TEXT NOT NULL, kind TEXT NOT NULL, day TEXT NOT NULL, writer TEXT NOT NULL,
    {counters}, PRIMARY KEY (tenant, device_id, kind, day, writer))""",
        "CREATE INDEX usage_day ON usage (day)",
        "CREATE INDEX audit_tenant ON audit (tenant, at)",
    )


SQLITE_SCHEMA = schema("REAL", "INTEGER")
PG_SCHEMA = schema("double precision", "bigint")
SCHEMA_SUMMARY = "usage per tenant, device, kind and day; audit by tenant"

_UPDATES = ", ".join(
    f"{c} = CASE WHEN excluded.{c} > usage.{c} THEN excluded.{c} ELSE usage.{c} END"
    if c == _MAX
    else f"{c} = usage.{c} + excluded.{c}"
    for c in COUNTERS
)
UPSERT = (
    f"INSERT INTO usage (tenant, device_id, kind, day, writer, {', '.join(COUNTERS)})"
    f" VALUES ({', '.join('?' * (5 + len(COUNTERS)))})"
    f" ON CONFLICT (tenant, device_id, kind, day, writer) DO UPDATE SET {_UPDATES}"
)


def sql(text: str, marker: str) -> str:
    """`text` with its placeholders spelled `marker`."""
    return text if marker == "?" else text.replace("?", marker)


def upsert_rows(tallies: list[Tally], writer: str) -> list[tuple[Any, ...]]:
    """Parameters of UPSERT, one tuple per (already merged) tally."""
    return [(*t.key, writer, *t.columns()) for t in tallies]


def select(query: UsageQuery, marker: str = "?") -> tuple[str, list[Any]]:
    """The grouped SUM query of a report, and its parameters; rows ordered by the grouped columns."""
    where, params = ["day >= ?", "day <= ?"], [query.since, query.until]
    for column, value in (("tenant", query.tenant), ("device_id", query.device_id), ("kind", query.kind)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    keys = ", ".join(query.columns)
    sums = ", ".join(f"max({c}) AS {c}" if c == _MAX else f"sum({c}) AS {c}" for c in COUNTERS)
    text = f"SELECT {keys}, {sums} FROM usage WHERE {' AND '.join(where)} GROUP BY {keys} ORDER BY {keys}"
    return sql(text, marker), params
