"""P3 edge memory: RSS of the edge-outbox process with 0, 100,000 and 1,000,000 intents queued (offline)."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path

from bench.load import publish_timed
from bench.procs import free_port, rss_mb
from bench.report import Figure
from bench.stack import EnrolledPair, Stack, edge_counts, intent_body

SECTION = "P3"
SEED = 10_000  # intents published through MQTT; larger backlogs are these rows copied with new ids
_COLUMNS = (
    "app, kind, state, code, detail, priority, created, expires, updated, attempt, sent, sent_at, confirmed, "
    "payload, size"
)


def grow(db: Path, target: int) -> None:
    """Copy accepted rows (with new ids) until `target` are queued; mark their events as already published."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        base = int(conn.execute("SELECT count(*) FROM intents WHERE state = 'accepted'").fetchone()[0])
        have, k = base, 0
        conn.execute("BEGIN")
        while have < target:
            n = min(base, target - have)
            conn.execute(
                f"INSERT INTO intents (id, {_COLUMNS}) SELECT id || '-c{k}', {_COLUMNS} FROM intents "
                "WHERE state = 'accepted' AND id NOT LIKE '%-c%' ORDER BY seq LIMIT ?",
                (n,),
            )
            have, k = have + n, k + 1
        # The copies are old news to the apps: the status publisher starts after the last event.
        conn.execute(
            "INSERT INTO meta(key, value) SELECT 'status_published_seq', CAST(MAX(seq) AS TEXT) FROM events "
            "WHERE 1 ON CONFLICT(key) DO UPDATE SET value = excluded.value"
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def run(stack: Stack, runs: int, sizes: list[int]) -> list[Figure]:
    # Enrolled, with the bridge down: the outbox is offline and its forwarder keeps trying.
    pair = EnrolledPair(stack, "p3")
    seed_dir = pair.root / "seed"
    shutil.copytree(pair.edge_tpl, seed_dir)
    port = free_port()
    edge = stack.start_edge(seed_dir, port, "--no-forward", "--max-queue-items", "0", name="edge-p3-seed")
    seed = min(SEED, max(sizes))
    if seed:
        asyncio.run(publish_timed(port, 4, 3600, intent_body, max_messages=seed))
    edge.stop()
    figures: list[Figure] = []
    for size in sizes:
        idle = Figure(SECTION, f"{size:,} queued, idle after start", "MB", higher_is_better=False, target="<= 100 MB")
        busy = Figure(
            SECTION, f"{size:,} queued, peak while taking 2,000 more", "MB", higher_is_better=False, target="<= 100 MB"
        )
        data = pair.root / f"size-{size}"
        if size == 0:
            shutil.copytree(pair.edge_tpl, data)
        else:
            shutil.copytree(seed_dir, data)
            if size < seed:
                raise ValueError("sizes below the seed are not supported")
            grow(data / "outbox.db", size)
        queued = edge_counts(data).get("accepted", 0)
        print(f"  P3 {size:,} queued (database has {queued:,})", flush=True)
        for _ in range(runs):
            port = free_port()
            edge = stack.start_edge(data, port, "--max-queue-items", "0", name="edge-p3")
            time.sleep(3.0)
            idle.samples.append(rss_mb(edge.pid)[0])
            asyncio.run(publish_timed(port, 1, 3600, intent_body, max_messages=2000))
            busy.samples.append(rss_mb(edge.pid)[1])
            edge.stop()
        stack.discard(data)
        figures += [idle, busy]
    return figures
