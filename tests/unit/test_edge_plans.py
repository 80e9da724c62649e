"""The edge's frequent queries use their indexes: a scan costs O(every row kept) at every call."""

import sqlite3
from collections.abc import Callable

from edge_outbox import event_log, ops
from edge_outbox.db import SCHEMA
from edge_outbox.ops import EXPIRE_DUE_SQL


def test_the_deadline_check_goes_through_its_index() -> None:
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    found = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {EXPIRE_DUE_SQL}", ("expired", 0, 0)))
    assert "USING INDEX intents_deadline" in found and "SCAN intents" not in found, found


def _steps(conn: sqlite3.Connection, fn: Callable[[], object]) -> int:
    """SQLite virtual machine steps `fn` took (a count of work done, not a time)."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 1)
    try:
        fn()
    finally:
        conn.set_progress_handler(None, 1)
    return steps


def test_a_replay_request_reads_the_apps_statuses_not_every_apps() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(SCHEMA)
    add = "INSERT INTO events(id, app, kind, state, code, detail, at) VALUES (?, ?, 'notify', 'delivered', '', '', 0)"
    conn.executemany(add, [(f"q{n}", "quiet") for n in range(3)])
    conn.executemany(add, [(f"b{n}", "busy") for n in range(20_000)])  # after the quiet app's, in seq order
    work = _steps(conn, lambda: event_log.app_statuses(conn, "quiet", 1, 500))
    assert [e.id for e in event_log.app_statuses(conn, "quiet", 1, 500)] == ["q1", "q2"]
    # Without an index on (app, seq) the request read the 20,000 statuses of the busy app (60,038 steps).
    assert work < 1_000, work


def test_a_revoked_outboxs_tick_reads_its_pending_intents_not_every_intent_kept() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(SCHEMA)
    conn.executemany(
        "INSERT INTO intents(id, app, kind, state, created, updated, payload, size, sent) VALUES (?, 'a', 'notify', ?,"
        " 0, 0, x'7b7d', 2, ?)",
        [("new", "accepted", 0), ("out", "forwarded", 1)] + [(f"d{n}", "delivered", 1) for n in range(20_000)],
    )
    work = _steps(conn, lambda: ops.end_revoked(conn, 1))  # at every housekeeping tick once revoked
    ended = dict(conn.execute("SELECT id, code FROM intents WHERE state = 'failed'").fetchall())
    assert ended == {"new": "device_revoked", "out": "device_revoked_unknown"}
    # `state IN ('accepted')` missed the partial index: every tick read the 20,000 delivered ones (60,484 steps).
    assert work < 1_000, work
