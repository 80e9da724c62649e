"""The edge's per-tick queries use their partial indexes: a scan costs O(every intent kept) on every tick."""

import sqlite3

from edge_outbox.db import SCHEMA
from edge_outbox.ops import EXPIRE_DUE_SQL


def test_the_deadline_check_goes_through_its_index() -> None:
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    found = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {EXPIRE_DUE_SQL}", ("expired", 0, 0)))
    assert "USING INDEX intents_deadline" in found and "SCAN intents" not in found, found
