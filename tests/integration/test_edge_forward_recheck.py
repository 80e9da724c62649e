"""The walk that sends `forwarded` intents again after a start (edge_outbox.forward_recheck) on a real store file."""

from __future__ import annotations

from pathlib import Path

from edge_outbox import db
from edge_outbox.forward_recheck import SCAN, Recheck


def test_every_forwarded_intent_sent_before_the_start_is_taken_once_in_bounded_steps(tmp_path: Path) -> None:
    conn = db.connect(tmp_path)
    rows = []
    for n in range(3 * SCAN + 17):
        state = "forwarded" if n % 3 == 0 else "delivered"
        sent_at = 50 if n % 7 == 0 else 5  # sent after the start: its result is on its way
        rows.append((f"i{n}", "a", "email.send", state, 1, 1, sent_at, b"x" * 100, 100))
    conn.executemany(
        "INSERT INTO intents(id, app, kind, state, created, updated, sent_at, payload, size)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute("DELETE FROM intents WHERE seq < 40")  # purged: the walk starts at the first kept
    wanted = {i for (i,) in conn.execute("SELECT id FROM intents WHERE state = 'forwarded' AND sent_at < 10")}
    recheck, taken, steps = Recheck(10), [], 0
    while not recheck.done:
        batch = recheck.batch(conn, limit=50, max_bytes=1000, now=20)
        assert len(batch) <= 10, "over max_bytes"
        taken += [row.id for row in batch]
        steps += 1
    assert len(taken) == len(set(taken)) and set(taken) == wanted
    assert steps >= len(wanted) // 10
    assert recheck.batch(conn, limit=50, max_bytes=1000, now=30) == []
    resent = conn.execute("SELECT COUNT(*) FROM intents WHERE state = 'forwarded' AND sent_at = 20").fetchone()[0]
    assert resent == len(wanted)
    conn.close()
